"""One MBConv at three kernel sizes in each runtime installed here: which depthwise kernels a runtime is slow at.

    python benchmarks/kernel_sizes.py --out benchmarks/results/kernel_sizes_litert.json   # in the litert environment

MBConv (expansion 6, stride 1) of 8 channels at 32x32, kernel 3, 5 and 7, float32, 1 thread, batch 1, every
file timed in the same interleaved rounds as `hwnas export` times. LiteRT's file is also timed with its
XNNPACK delegate switched off (TFLite's builtin kernels), which tells a slow delegate kernel from a slow
layer. Run it on a quiet machine: the load average before and after and the host's fingerprint are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from hwnas.ops.mobile import MBConv
from hwnas.runtimes import RUNTIMES
from hwnas.runtimes.base import FileRuntime, RuntimeMissing
from profilers import measure as timing

SHAPE = (1, 8, 32, 32)


def without_delegate(path: Path, x: np.ndarray):
    """The LiteRT file on TFLite's builtin kernels (no XNNPACK)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from profilers.litert_runner import LiteRtModel

    interpreter = Interpreter(model_path=str(path), num_threads=1,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return LiteRtModel(interpreter).bound(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/results/kernel_sizes.json")
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    calls, versions = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in RUNTIMES.values():
            if not isinstance(runtime, FileRuntime):
                continue
            try:
                versions[runtime.name] = runtime.version()
            except RuntimeMissing:
                continue
            for kernel in (3, 5, 7):
                path = Path(tmp) / f"{runtime.name}-k{kernel}{runtime.suffix}"
                runtime.save(MBConv(SHAPE[1], SHAPE[1], kernel, 6, 1).eval(), SHAPE, path)
                calls[f"{runtime.name}:k{kernel}"] = runtime.load(path, 1).bound(x)
                if runtime.name == "litert":
                    calls[f"litert-without-xnnpack:k{kernel}"] = without_delegate(path, x)
        before = round(os.getloadavg()[0], 2)
        measured = timing.measure_networks(calls, warmup=20, runs=args.runs, prepare={n: x.sum for n in calls})
    host = timing.host_identity()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "layer": "MBConv, expansion 6, stride 1, 8 channels, 32x32",
              "threads": 1, "batch": 1, "runtime_versions": versions, "load_average_1min_before": before,
              "load_average_1min_after": round(os.getloadavg()[0], 2),
              "host": {k: host[k] for k in ("cpu_model", "cpu_flags", "vector_isa")},
              "p10_ms": {name: round(measured[name]["p10_ms"], 4) for name in calls}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["p10_ms"], indent=1))


if __name__ == "__main__":
    main()
