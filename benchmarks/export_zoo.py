"""Every published cell (at the CIFAR-10 setting, C=36, 20 cells) and DenseNAS-C (ImageNet, 224x224)
through `hwnas export`, in each runtime: parity with PyTorch and the latency measured in the runtime
(1 thread, batch 1), beside the runtime's shipped table's prediction where one exists.

    python benchmarks/export_zoo.py --format onnx      # ONNX Runtime (and .ort) and PyTorch eager
    python benchmarks/export_zoo.py --format pte       # in an environment with the executorch extra
    python benchmarks/export_zoo.py --format tflite    # in one with the litert extra

Each run adds its runtime's rows to the one JSON (the mobile runtimes cannot share an environment), and
a network already measured in that runtime is kept. The networks are untrained (no CIFAR-10 or ImageNet
on this machine) and given outputs of order one (hwnas/runtimes/parity.py), so parity is checked on
random inputs; real-image parity of trained networks is covered by the tests and `hwnas run`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from hwnas.export import export, resolve_network
from hwnas.runtimes import get_runtime
from profilers import measure as timing

# each runtime's shipped tables of this machine; a network is predicted where its runtime has its space's table
TABLES = {"onnx": "latency_tables/amd-epyc-2core-ort-1thread", "pte": "latency_tables/amd-epyc-2core-executorch-1thread",
          "tflite": "latency_tables/amd-epyc-2core-litert-1thread"}
NETWORKS = [(name, "cifar10", "darts_cifar10.csv")
            for name in ("DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PC_DARTS_image", "PDARTS", "GDAS_V1", "GDAS_F1")]
NETWORKS.append(("DenseNAS-C", "imagenet", "densenas_224.csv"))


def eager_ms(name: str, dataset: str, runs: int) -> float:
    """PyTorch eager latency of the same network, timed as the runtimes' files are."""
    net = resolve_network(name, None, dataset)
    shape = (1, net["channels"], net["size"], net["size"])
    calls, prepare = get_runtime("torch").network_calls({name: net["model"]}, shape, 1, Path("."))
    return timing.measure_networks(calls, warmup=10, runs=runs, prepare=prepare)[name]["p10_ms"]


def measure_one(name: str, dataset: str, table: str, fmt: str, tmp: Path, runs: int, tables: str) -> dict:
    # GDAS_F1's fixed reduction cell has no table keys: it is exported and measured without a prediction
    table_path = Path(tables) / table
    use_table = str(table_path) if table_path.is_file() and name != "GDAS_F1" else None
    started = time.perf_counter()
    report = export(name, tmp / f"{name}.onnx", dataset=dataset, table=use_table, formats=["ort" if fmt == "onnx" else fmt],
                    runs=runs)
    if fmt == "onnx":
        lat, checks, path = report["latency"], report["parity"], tmp / f"{name}.onnx"
    else:
        other = report["runtimes"][fmt]
        lat, checks, path = other["latency"], other["parity"], Path(other["path"])
    row = {"arch": name, "dataset": dataset, "params": report["params"], "macs": report["macs"],
           "random_max_abs_diff": checks["random"]["max_abs_diff"], "tolerance": checks["random"]["tolerance"],
           "max_abs_output": checks["random"]["max_abs_output"], "bytes": path.stat().st_size,
           "measured_ms": lat["measured_ms"], "predicted_ms": lat.get("predicted_ms"), "error_pct": lat.get("error_pct"),
           "table": use_table, "table_same_host": lat.get("table_same_host")}
    if fmt == "onnx":
        row["ort_max_abs_diff"] = report["runtimes"]["ort"]["parity"]["random"]["max_abs_diff"]
        row["torch_eager_ms"] = eager_ms(name, dataset, runs)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=["onnx", "pte", "tflite"], default="onnx")
    parser.add_argument("--out", default="benchmarks/results/export_zoo.json")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--networks", nargs="+", choices=[name for name, _, _ in NETWORKS],
                        help="only these (default: all)")
    parser.add_argument("--tables", help="the folder of tables to predict with (default: the runtime's shipped one)")
    args = parser.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    if "runtimes" not in result:  # a file written before the runtimes were measured side by side
        result = {"runtimes": {}}
    runtime = get_runtime({"onnx": "ort", "pte": "executorch", "tflite": "litert"}[args.format])
    entry = result["runtimes"].setdefault(args.format, {"rows": []})
    entry.update(runtime=runtime.name, runtime_version=runtime.version(), threads=1, batch=1)
    done = {row["arch"] for row in entry["rows"]}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dataset, table in NETWORKS:
            if name in done or (args.networks and name not in args.networks):
                continue
            load = round(os.getloadavg()[0], 2)
            row = {**measure_one(name, dataset, table, args.format, Path(tmp), args.runs, args.tables or TABLES[args.format]), "load_average_1min": load,
                   "cpu_model": timing.cpu_model(),
                   "cpu_flags": timing.host_identity()["cpu_flags"], "date": time.strftime("%Y-%m-%d %H:%M")}
            entry["rows"].append(row)
            print(json.dumps(row), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")  # each network kept as it is measured


if __name__ == "__main__":
    main()
