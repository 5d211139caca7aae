"""Int8 export of trained networks: the remedy kept, accuracy drop and speed-up with ONNX Runtime (1 thread, batch 1),
and with the other runtimes named by --formats.

    python benchmarks/int8_export.py --weights runs/quick/train/weights/last.pt [more weights ...] \
        --out benchmarks/results/int8_export.json
    python benchmarks/int8_export.py --formats tflite ...    # in the litert environment: LiteRT's int8 file too

`hwnas export --quantize int8` for each: static QDQ quantization with the cheapest remedy of
hwnas/quantize.py whose accuracy on held-out training images is within --max-accuracy-drop points of
the float network's (each remedy tried is recorded); accuracy of the fp32 and the int8 file on the test
images (up to 2000) with ONNX Runtime; the speed-up from both files timed in the same interleaved rounds.
With --formats, each of those runtimes' own int8 file (`runtimes.<format>.int8` of the export report) is
measured the same way, on the same calibration and test images. Run it on a quiet machine: the load
average before each network is recorded. Each finished network is written to --out at once and reused
when the script runs again with the same settings, so a long list can be measured over several sittings.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from hwnas.export import export
from profilers.measure import host_identity


def one(weights: str, runs: int, max_drop: float, formats: list[str]) -> dict:
    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.onnx"
        report = export(None, model, weights=weights, quantize="int8", runs=runs, max_accuracy_drop=max_drop / 100,
                        formats=formats)
        onnx_figures = row(report["latency"]["measured_ms"], report["int8"], model)
        others = {fmt: row(report["runtimes"][fmt]["latency"]["measured_ms"], report["runtimes"][fmt]["int8"],
                           model.with_suffix(f".{fmt}")) for fmt in formats}
    return {"weights": weights, "arch_text": report["arch_text"], "dataset": report["dataset"],
            "params": report["params"], "macs": report["macs"], "load_average_1min": load, **onnx_figures,
            "met_on_selection": report["int8"]["met_on_selection"],
            "timing": {k: report["latency"][k] for k in ("threads", "runs", "estimator", "batch")},
            **({"runtimes": others} if others else {})}


def row(fp32_ms: float, q: dict, fp32: Path) -> dict:
    """One runtime's int8 figures: `q` is its int8 entry in the export report, `fp32` its float file."""
    int8 = fp32.with_suffix(".int8" + fp32.suffix)
    return {"fp32_ms": fp32_ms, "int8_ms": q["measured_ms"], "speedup": q["speedup"],
            "fp32_acc": q["fp32_acc"], "int8_acc": q["int8_acc"], "accuracy_drop": q["accuracy_drop"],
            "test_images": q["test_images"], "remedy": q["remedy"], "selection_images": q["selection_images"],
            "tried": q["tried"], "fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size,
            **({"scheme": q["scheme"]} if "scheme" in q else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", nargs="+", default=["runs/quick/train/weights/last.pt"])
    parser.add_argument("--out", default="benchmarks/results/int8_export.json")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0, help="points")
    parser.add_argument("--formats", nargs="*", default=[], help="other runtimes' files whose int8 is measured too "
                        "(pte, tflite: in the environment with that runtime's extra)")
    args = parser.parse_args()
    settings = {"runtime": "onnxruntime, 1 thread, batch 1", "other_runtimes": args.formats,
                "host": {k: v for k, v in host_identity().items() if k in ("cpu_model", "cpu_flags")},
                "max_accuracy_drop_points": args.max_accuracy_drop, "runs": args.runs}
    out = Path(args.out)
    done = finished_rows(out, settings)
    rows = []
    for weights in args.weights:
        if weights in done:
            rows.append(done[weights])
            print(f"{weights}: measured before, kept", flush=True)
            continue
        rows.append(one(weights, args.runs, args.max_accuracy_drop, args.formats))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("arch_text", "tried", "runtimes")}), flush=True)
        for fmt, figures in rows[-1].get("runtimes", {}).items():
            print(fmt, json.dumps({k: v for k, v in figures.items() if k != "tried"}), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), **settings, "rows": rows}, indent=2) + "\n")


def finished_rows(out: Path, settings: dict) -> dict[str, dict]:
    """The rows an earlier run of the same settings on this host wrote to `out`, by weights file."""
    if not out.is_file():
        return {}
    earlier = json.loads(out.read_text())
    if any(earlier.get(key) != value for key, value in settings.items()):
        raise SystemExit(f"{out} holds results of other settings or another host: name another --out")
    return {row["weights"]: row for row in earlier["rows"]}


if __name__ == "__main__":
    main()
