"""Seconds per search step and peak resident memory, per method, at the DARTS CIFAR setting.

Each method is measured in its own fresh process (so peak memory is that method's alone):
C=16, 8 cells, batch 64, 3x32x32 input, CPU, random data. Steps are the search loop's own `weight_step` and `arch_step`. One untimed warm-up step of each comes first (oneDNN builds its
kernels on first use).

    python benchmarks/search_step.py --out benchmarks/results/search_step.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(method: str, steps: int, layers: int, batch: int) -> dict:
    import torch

    from hwnas.allocator import keep_freed_memory
    from hwnas.info import recipe_supernet_config
    from hwnas.methods import get_method
    from hwnas.search import arch_step, weight_step

    keep_freed_memory()  # as the search loop does
    torch.manual_seed(0)
    # the method's own CIFAR recipe (PC-DARTS's K, P-DARTS's first stage), at the common depth
    config = recipe_supernet_config(method, {"layers": layers, "init_channels": 16})
    impl = get_method(method)(config, 10, 3)
    model = impl.build_supernet()
    channels_last = config.search.channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def weight() -> None:
        weight_step(impl, model, w_opt, (x, y), 5.0)

    def arch() -> None:
        arch_step(impl, model, a_opt, w_opt, (x, y), (x, y), None)

    times: dict[str, list[float]] = {"weight_step": [], "arch_step": []}
    for i in range(steps + 1):
        for name, step in (("arch_step", arch), ("weight_step", weight)):
            started = time.perf_counter()
            step()
            if i > 0:
                times[name].append(time.perf_counter() - started)
    return {
        "method": method,
        "weight_step_seconds": min(times["weight_step"]),
        "weight_step_seconds_all": times["weight_step"],
        "arch_step_seconds": min(times["arch_step"]),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "channels_last": channels_last, "layers": layers, "batch": batch,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["darts"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/search_step.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.methods[0], args.steps, args.layers, args.batch)))
        return
    results = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--child", "--methods", method, "--steps", str(args.steps),
               "--layers", str(args.layers), "--batch", str(args.batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    base = next((r for r in results if r["method"] == "darts"), None)
    if base:
        for r in results:
            r["time_vs_darts"] = r["weight_step_seconds"] / base["weight_step_seconds"]
            r["memory_vs_darts"] = r["peak_rss_gb"] / base["peak_rss_gb"]
    report = {
        "benchmark": "search_step", "machine": platform.processor() or platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "reference_original_release": {"weight_step_seconds": 9.5, "peak_rss_gb": 10.7},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
