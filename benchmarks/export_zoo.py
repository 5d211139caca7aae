"""Every published cell (at the CIFAR-10 setting, C=36, 20 cells) and DenseNAS-C (ImageNet, 224x224)
through `hwnas export`: ONNX checker, ORT-vs-PyTorch parity, the mobile .ort file, and the latency
measured with ONNX Runtime (1 thread, batch 1) beside the shipped table's prediction.

    python benchmarks/export_zoo.py --out benchmarks/results/export_zoo.json

The networks are untrained (no CIFAR-10 or ImageNet on this machine), so parity is checked on random
inputs; real-image parity of trained networks is covered by the tests and `hwnas run`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hwnas.export import export

TABLES = "latency_tables/amd-epyc-2core-ort-1thread"
NETWORKS = [(name, "cifar10", f"{TABLES}/darts_cifar10.csv")
            for name in ("DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PC_DARTS_image", "PDARTS", "GDAS_V1", "GDAS_F1")]
NETWORKS.append(("DenseNAS-C", "imagenet", f"{TABLES}/densenas_224.csv"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/export_zoo.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, dataset, table in NETWORKS:
            started = time.perf_counter()
            # GDAS_F1's fixed reduction cell has no table keys: it is exported and measured without a prediction
            use_table = table if name != "GDAS_F1" else None
            report = export(name, Path(tmp) / f"{name}.onnx", dataset=dataset, table=use_table, ort_format=True)
            lat = report["latency"]
            row = {"arch": name, "dataset": dataset, "params": report["params"], "macs": report["macs"],
                   "random_max_abs_diff": report["parity"]["random"]["max_abs_diff"],
                   "tolerance": report["parity"]["random"]["tolerance"],
                   "ort_max_abs_diff": report["ort"]["parity"]["max_abs_diff"],
                   "onnx_bytes": (Path(tmp) / f"{name}.onnx").stat().st_size,
                   "ort_bytes": (Path(tmp) / f"{name}.ort").stat().st_size,
                   "measured_ms": lat["measured_ms"], "predicted_ms": lat.get("predicted_ms"),
                   "error_pct": lat.get("error_pct"), "seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(json.dumps(row))
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "runtime": "onnxruntime, 1 thread, batch 1", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
