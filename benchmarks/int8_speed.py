"""Does int8 make a network faster here? Each network in each runtime that quantizes, float32 against
int8 (the runtime's int8 scheme, as its int8 tables are made: ONNX Runtime static QDQ per channel,
ExecuTorch XNNPACKQuantizer), 1 thread, batch 1, timed together in bursts as `hwnas export` times.

    python benchmarks/int8_speed.py --arch runs/main-job-int8/budget-0.438ms-int8/search/arch.json

Run it in an environment with the executorch extra to include ExecuTorch (ONNX Runtime is always
there), on a quiet machine: the load average and the host's fingerprint are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from hwnas.export import resolve_network
from hwnas.kinds import kind_of, load_arch
from hwnas.latency.networks import build_network
from hwnas.runtimes import RUNTIMES
from hwnas.runtimes.base import FileRuntime, RuntimeMissing
from hwnas.spaces.definition import load_space
from profilers import measure as timing


def networks(arch_path: str | None) -> dict:
    found = {"DenseNAS-C": (resolve_network("DenseNAS-C", None, "imagenet")["model"], (1, 3, 224, 224))}
    if arch_path:
        arch = load_arch(arch_path)
        space = load_space(kind_of(arch).space_name(arch))
        found[Path(arch_path).parent.parent.name] = (build_network(space, arch), (1, space.input_channels,
                                                                                   space.input_size, space.input_size))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", help="a routed arch.json of a small space (for example a main job's search)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", default="benchmarks/results/int8_speed.json")
    args = parser.parse_args()
    rows = []
    nets = networks(args.arch)  # built once, saved by each runtime
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in RUNTIMES.values():
            if not isinstance(runtime, FileRuntime) or "int8" not in runtime.precisions:
                continue
            try:
                version = runtime.version()
            except RuntimeMissing:
                continue
            for name, (model, shape) in nets.items():
                x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
                calls = {}
                for dtype in ("float32", "int8"):
                    path = Path(tmp) / f"{runtime.name}-{name}-{dtype}{runtime.suffix}"
                    runtime.save_at(model, shape, path, dtype)
                    calls[dtype] = runtime.load(path, 1).bound(x)
                load = round(os.getloadavg()[0], 2)
                measured = timing.measure_networks(calls, warmup=10, runs=args.runs,
                                                   prepare={n: x.sum for n in calls})
                row = {"runtime": runtime.name, "runtime_version": version, "network": name,
                       "float32_ms": measured["float32"]["p10_ms"], "int8_ms": measured["int8"]["p10_ms"],
                       "speedup": measured["float32"]["p10_ms"] / measured["int8"]["p10_ms"],
                       "load_average_1min_before": load}
                rows.append(row)
                print(json.dumps(row), flush=True)
    host = timing.host_identity()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "threads": 1, "batch": 1,
              "host": {k: host[k] for k in ("cpu_model", "cpu_flags", "vector_isa")}, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
