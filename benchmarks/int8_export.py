"""Int8 export of one trained network: accuracy drop and speed-up with ONNX Runtime (1 thread, batch 1).

    python benchmarks/int8_export.py --weights runs/quick/train/weights/last.pt \
        --out benchmarks/results/int8_export.json

Static QDQ quantization (int8 weights per channel, uint8 activations) calibrated on 256 real training
images; accuracy of the fp32 and the int8 file on the test images (up to 2000) with ONNX Runtime; the
speed-up from both files timed in the same interleaved rounds. The default weights are those of
`hwnas run --out runs/quick` (a DenseNAS network searched under 4 ms and trained on digits).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hwnas.export import export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="runs/quick/train/weights/last.pt")
    parser.add_argument("--out", default="benchmarks/results/int8_export.json")
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = export(None, Path(tmp) / "model.onnx", weights=args.weights, quantize="int8", runs=args.runs)
        sizes = {name: (Path(tmp) / name).stat().st_size for name in ("model.onnx", "model.int8.onnx")}
    q = report["int8"]
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "weights": args.weights, "arch_text": report["arch_text"],
              "dataset": report["dataset"], "params": report["params"], "macs": report["macs"],
              "fp32_ms": report["latency"]["measured_ms"], "int8_ms": q["measured_ms"], "speedup": q["speedup"],
              "fp32_acc": q["fp32_acc"], "int8_acc": q["int8_acc"], "accuracy_drop": q["accuracy_drop"],
              "test_images": q["test_images"], "calibration_images": q["calibration_images"],
              "fp32_bytes": sizes["model.onnx"], "int8_bytes": sizes["model.int8.onnx"],
              "timing": {k: report["latency"][k] for k in ("threads", "runs", "estimator", "batch")}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
