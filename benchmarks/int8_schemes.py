"""Which static int8 scheme runs fastest in ONNX Runtime on this CPU? The same float network quantized as
hwnas does (QDQ, per-channel int8 weights, uint8 activations: U8S8) and with int8 activations (S8S8,
symmetric and asymmetric), calibrated on the same images, timed together in bursts, 1 thread, batch 1.

    python benchmarks/int8_schemes.py --out benchmarks/results/int8_schemes.json

Networks: the hand-designed networks of the search-against-baselines plan at its tightest and loosest
budget and the first searched network of its tightest. Run it on a quiet machine: the load average and the
host's fingerprint are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from hwnas.archs.routed import RoutedArch
from hwnas.latency.networks import build_network
from hwnas.quantize import prepare
from hwnas.runtimes import get_runtime
from hwnas.spaces.definition import load_space
from profilers import measure as timing

RUNS = Path("benchmarks/runs/search-vs-baselines")
SCHEMES = {"u8s8": ("QUInt8", False), "s8s8": ("QInt8", True), "s8s8_asymmetric": ("QInt8", False)}


def networks() -> dict[str, RoutedArch]:
    plan = json.loads((RUNS / "plan.json").read_text())
    return {"hand_b0": RoutedArch.from_dict(plan["budgets"][0]["hand_designed"]),
            "searched_b0_s0": RoutedArch.from_dict(json.loads((RUNS / "b0-search-s0" / "arch.json").read_text())),
            "hand_b2": RoutedArch.from_dict(plan["budgets"][-1]["hand_designed"])}


def quantized(prepared: Path, out: Path, input_name: str, images: np.ndarray, activations: str, symmetric: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter({input_name: images[i:i + 1]} for i in range(len(images)))

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=getattr(QuantType, activations), weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": symmetric})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/results/int8_schemes.json")
    args = parser.parse_args()
    import onnxruntime as ort

    runtime, space = get_runtime("ort"), load_space("densenas_32_small")
    shape = (1, space.input_channels, space.input_size, space.input_size)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    images = np.random.default_rng(1).standard_normal((64, *shape[1:])).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch in networks().items():
            fp32, prepared = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.prepared.onnx"
            runtime.save(build_network(space, arch).eval(), shape, fp32)
            prepare(fp32, prepared)
            input_name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
            files = {"float32": fp32}
            for scheme, (activations, symmetric) in SCHEMES.items():
                files[scheme] = Path(tmp) / f"{name}.{scheme}.onnx"
                quantized(prepared, files[scheme], input_name, images, activations, symmetric)
            calls = {scheme: runtime.load(path, 1).bound(x) for scheme, path in files.items()}
            load = round(os.getloadavg()[0], 2)
            measured = timing.measure_networks(calls, warmup=20, runs=args.runs, prepare={n: x.sum for n in calls})
            float_ms = measured["float32"]["p10_ms"]
            row = {"network": name, "arch": str(arch), "load_average_1min_before": load,
                   **{f"{scheme}_ms": round(m["p10_ms"], 5) for scheme, m in measured.items()},
                   **{f"{scheme}_speedup": round(float_ms / measured[scheme]["p10_ms"], 3) for scheme in SCHEMES}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    host = timing.host_identity()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "runtime": f"onnxruntime {runtime.version()}", "threads": 1,
              "batch": 1, "host": {k: host[k] for k in ("cpu_model", "cpu_flags", "vector_isa")}, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
