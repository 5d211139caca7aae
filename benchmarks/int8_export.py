"""Int8 export of trained networks: the remedy kept, accuracy drop and speed-up with ONNX Runtime (1 thread, batch 1).

    python benchmarks/int8_export.py --weights runs/quick/train/weights/last.pt [more weights ...] \
        --out benchmarks/results/int8_export.json

`hwnas export --quantize int8` for each: static QDQ quantization with the cheapest remedy of
hwnas/quantize.py whose accuracy on held-out training images is within --max-accuracy-drop points of
the float network's (each remedy tried is recorded); accuracy of the fp32 and the int8 file on the test
images (up to 2000) with ONNX Runtime; the speed-up from both files timed in the same interleaved rounds.
Run it on a quiet machine: the load average before each network is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from hwnas.export import export


def one(weights: str, runs: int, max_drop: float) -> dict:
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        report = export(None, Path(tmp) / "model.onnx", weights=weights, quantize="int8", runs=runs,
                        max_accuracy_drop=max_drop / 100)
        sizes = {name: (Path(tmp) / name).stat().st_size for name in ("model.onnx", "model.int8.onnx")}
    q = report["int8"]
    return {"weights": weights, "arch_text": report["arch_text"], "dataset": report["dataset"],
            "params": report["params"], "macs": report["macs"], "load_average_1min": load,
            "fp32_ms": report["latency"]["measured_ms"], "int8_ms": q["measured_ms"], "speedup": q["speedup"],
            "fp32_acc": q["fp32_acc"], "int8_acc": q["int8_acc"], "accuracy_drop": q["accuracy_drop"],
            "test_images": q["test_images"], "remedy": q["remedy"], "met_on_selection": q["met_on_selection"],
            "selection_images": q["selection_images"], "tried": q["tried"],
            "fp32_bytes": sizes["model.onnx"], "int8_bytes": sizes["model.int8.onnx"],
            "timing": {k: report["latency"][k] for k in ("threads", "runs", "estimator", "batch")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", default=["runs/quick/train/weights/last.pt"])
    parser.add_argument("--out", default="benchmarks/results/int8_export.json")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0, help="points")
    args = parser.parse_args()
    rows = []
    for weights in args.weights:
        rows.append(one(weights, args.runs, args.max_accuracy_drop))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("arch_text", "tried")}), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "runtime": "onnxruntime, 1 thread, batch 1",
              "max_accuracy_drop_points": args.max_accuracy_drop, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
