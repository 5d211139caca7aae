"""Quantization-aware fine-tuning against post-training quantization, on trained networks (ONNX Runtime,
1 thread, batch 1).

    python benchmarks/qat.py --weights runs/quick/train/weights/last.pt [more weights ...] \
        --out benchmarks/results/qat.json

For each network: the fp32 ONNX file; the first post-training remedy of hwnas/quantize.py
(`per-channel`); and the `qat` remedy (hwnas/qat.py: --qat-epochs on the dataset's training images, then
`per-channel` on the fine-tuned weights with the same calibration images). The
three files' test accuracy (up to 2000 test images) with ONNX Runtime and their latency, all three timed
in the same interleaved rounds. `hwnas export --quantize int8` only fine-tunes when post-training
quantization loses more than --max-accuracy-drop; this measures both rungs for every network, so their
accuracy and speed can be held side by side. Run it on a quiet machine: the load average before each
network's timing is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from hwnas.export import BASE, EVAL_IMAGES, measure_latency, outputs_in_batches, real_images, resolve_network
from hwnas.qat import fine_tuned
from hwnas.quantize import LADDER, prepare, quantize
from hwnas.runtimes.onnx import export_onnx


def one(weights: str, epochs: int, runs: int) -> dict:
    net = resolve_network(None, weights, None)
    shape = (1, net["channels"], net["size"], net["size"])
    test_x, test_y = real_images(net["dataset"], shape[1], shape[2], "test", EVAL_IMAGES, None)
    calibration, _ = real_images(net["dataset"], shape[1], shape[2], "train", LADDER[0].calibration_images, None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = {name: work / f"{name}.onnx" for name in ("fp32", "per-channel", "qat")}
        export_onnx(net["model"].eval(), shape, files["fp32"])
        prepare(files["fp32"], work / "prepared.onnx")
        quantize(work / "prepared.onnx", files["per-channel"], calibration, LADDER[0])
        started = time.perf_counter()
        network, fine_tuning = fine_tuned(net, shape, epochs, None)
        export_onnx(network, shape, work / "tuned.onnx")
        prepare(work / "tuned.onnx", work / "tuned_prepared.onnx")
        quantize(work / "tuned_prepared.onnx", files["qat"], calibration, LADDER[0])
        fine_tuning["seconds"] = round(time.perf_counter() - started, 1)
        accuracy = {name: float((outputs_in_batches(BASE.load(path, 1).run, test_x, 1).argmax(axis=1) == test_y).mean())
                    for name, path in files.items()}
        load = round(os.getloadavg()[0], 2)
        latency = measure_latency(BASE, files, shape, threads=1, warmup=10, runs=runs)
    return {"weights": weights, "dataset": net["dataset"], "test_images": len(test_y), "fine_tuning": fine_tuning,
            "accuracy": accuracy, "drop_points": {name: 100 * (accuracy["fp32"] - accuracy[name])
                                                  for name in ("per-channel", "qat")},
            "load_average_1min_before_timing": load, "latency_ms": {k: v["measured_ms"] for k, v in latency.items()},
            "speedup": {name: latency["fp32"]["measured_ms"] / latency[name]["measured_ms"]
                        for name in ("per-channel", "qat")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", default=["runs/quick/train/weights/last.pt"])
    parser.add_argument("--out", default="benchmarks/results/qat.json")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    rows = []
    for weights in args.weights:
        rows.append(one(weights, args.qat_epochs, args.runs))
        print(json.dumps(rows[-1]), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "runtime": "onnxruntime, 1 thread, batch 1",
              "qat_epochs": args.qat_epochs, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
