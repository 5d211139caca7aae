"""Seconds per DenseNAS search step, by routing space and candidate weights (independent or nested).

Each setting is measured in its own fresh process: the search loop's own `weight_step` (one op
sampled per mixed op, uniformly, as before architecture updates start) and `arch_step` (two ops per
mixed op, the latency loss of the space's table when it has one), batch 64, 32x32 random input,
channels-last, the machine's threads. One untimed warm-up step of each comes first.

    python benchmarks/routing_step.py --out benchmarks/results/routing_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = [("densenas_32", "independent"), ("densenas_32_small", "independent"), ("densenas_32_small", "nested")]


def measure(space: str, sharing: str, steps: int, batch: int) -> dict:
    import torch

    from hwnas.allocator import keep_freed_memory
    from hwnas.config import load_config
    from hwnas.methods import SearchConfig
    from hwnas.methods import get_method
    from hwnas.models import count_parameters
    from hwnas.search import arch_step, weight_step

    keep_freed_memory()
    torch.manual_seed(0)
    config = load_config(SearchConfig, "configs/search/densenas_digits.yaml",
                         [f"method.space={space}", f"method.weight_sharing={sharing}", "method.latency_loss=none",
                          "method.table=null"])
    method = get_method("densenas")(config, 10, 3)
    model = method.build_supernet().to(memory_format=torch.channels_last)
    method.on_epoch_start(model, 0, 1)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.03, momentum=0.9, weight_decay=4e-5)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=0.01, betas=(0.5, 0.999), weight_decay=1e-3)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times: dict[str, list[float]] = {"weight_step": [], "arch_step": []}
    for i in range(steps + 1):
        for name, step in (("weight_step", lambda: weight_step(method, model, w_opt, (x, y), None)),
                           ("arch_step", lambda: arch_step(method, model, a_opt, w_opt, (x, y), (x, y), None))):
            started = time.perf_counter()
            step()
            if i:
                times[name].append(time.perf_counter() - started)
    ordered = {name: sorted(values) for name, values in times.items()}
    return {"space": space, "weight_sharing": sharing, "weights": count_parameters(model), "batch": batch,
            "threads": torch.get_num_threads(),
            "weight_step_seconds_median": ordered["weight_step"][len(ordered["weight_step"]) // 2],
            "weight_step_seconds_best": ordered["weight_step"][0],
            "arch_step_seconds_median": ordered["arch_step"][len(ordered["arch_step"]) // 2],
            "weight_step_seconds_all": times["weight_step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/routing_step.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.steps, args.batch)))
        return
    rows = []
    load = round(os.getloadavg()[0], 2)
    for space, sharing in SETTINGS:
        done = subprocess.run([sys.executable, __file__, "--child", space, sharing, "--steps", str(args.steps),
                               "--batch", str(args.batch)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{space:<18} {sharing:<11} {r['weights'] / 1e6:6.2f} M weights  weight step "
              f"{r['weight_step_seconds_median']:.3f} s (best {r['weight_step_seconds_best']:.3f})  "
              f"arch step {r['arch_step_seconds_median']:.3f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "load_average_1min_before": load,
                                          "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
