"""The main job, measured: `hwnas run` on digits at one or more budgets, and what each run reports.

    python benchmarks/main_job.py --out benchmarks/results/main_job.json                    # the quickstart
    python benchmarks/main_job.py --table-scale 1.3 --out benchmarks/results/main_job_off_table.json
    python benchmarks/main_job.py --fractions 0.1 0.3 0.5 0.7 0.9 --out benchmarks/results/densenas_budget.json
    python benchmarks/main_job.py --runtime executorch --out benchmarks/results/main_job_executorch.json
    python benchmarks/main_job.py --precision int8 --budgets 0.5 --out benchmarks/results/main_job_int8.json

Each budget is one `hwnas run` (table check, search, training, export, latency measured end to end) in
its own folder under --runs; a finished run is read back and an unfinished one resumed, so the benchmark
continues where it was stopped. `--table-scale S` simulates a shipped table that is off on this machine:
the shipped table with every prediction times S. `--fractions` sets budgets as fractions of the way
from the smallest to the largest latency of the space by the table. Run it on an otherwise quiet
machine: the load average before each run is recorded.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path

import torch

from hwnas.cli import main as hwnas
from hwnas.config import resolve_path
from hwnas.latency.cost import RoutingCost
from hwnas.latency.table import load_table, save_table, table_runtime
from hwnas.pipeline import load_run_config, shipped_table_for
from hwnas.runtimes import get_runtime
from hwnas.spaces.definition import load_space


def summarize(run_dir: Path, load_before: float | None) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    search = json.loads((run_dir / "search" / "report.json").read_text())
    with open(run_dir / "search" / "metrics.csv") as f:
        epochs = list(csv.DictReader(f))

    def number(text: str) -> float | None:
        value = float(text) if text not in ("", None) else math.nan
        return None if math.isnan(value) else round(value, 4)

    return {
        "budget_ms": report["budget_ms"], "predicted_ms": report["predicted_ms"], "measured_ms": report["measured_ms"],
        "measured_vs_budget_pct": report["measured_vs_budget_pct"], "budget": report["budget"],
        "table": report["table"], "test_acc": report["test_acc"], "params": report["params"], "macs": report["macs"],
        "search_end_val_acc": search["final"]["val_acc"], "op_choice_probability": op_choice_probability(run_dir),
        "seconds": report["seconds"],
        "budget_fit": [{k: r[k] for k in ("predicted_ms", "measured_ms", "table_scale", "budget")}
                       for r in report.get("budget_fit", [])],
        "arch_text": report["arch_text"], "parity": report["parity"], "load_average_1min_before": load_before, "run_dir": str(run_dir),
        "epochs": [{k: number(row[k]) if k != "epoch" else int(row[k])
                    for k in ("epoch", "train_acc", "val_acc", "arch_ce", "arch_latency_term", "expected_latency_ms",
                              "mu") if k in row} for row in epochs],
    }


def op_choice_probability(run_dir: Path) -> float:
    """How far the search decided the ops: the most probable op's softmax(alpha), averaged over the mixed
    ops of the search's last checkpoint (1 / 6 when undecided among the six MBConvs)."""
    state = torch.load(run_dir / "search" / "checkpoints" / "search.pt", map_location="cpu", weights_only=False)
    alphas = [value for name, value in state["model"].items() if name.startswith("alphas.")]
    return round(float(torch.stack([value.softmax(-1).max() for value in alphas]).mean()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/main_job.json")
    parser.add_argument("--runs", default="runs/main-job-benchmark", help="where the runs go")
    parser.add_argument("--config", default="configs/run/quickstart.yaml")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--budgets", type=float, nargs="+", help="budgets in ms (default: the config's)")
    group.add_argument("--fractions", type=float, nargs="+", help="budgets across the table's feasible range")
    parser.add_argument("--table-scale", type=float, help="simulate a shipped table off by this factor")
    parser.add_argument("--precision", choices=["float32", "int8"], default="float32",
                        help="int8: the network is deployed quantized, searched with an int8 table and its budget "
                             "judged on the int8 file")
    parser.add_argument("--runtime", help="the runtime the run deploys with (default the config's): its table, "
                                          "its file, its measured latency")
    args = parser.parse_args()

    config = load_run_config(args.config, [])
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    table_path = str(resolve_path(config.table))
    if args.table_scale:
        table_path = str(runs / f"shipped-x{args.table_scale:g}.csv")
        if not Path(table_path).is_file():
            shipped = load_table(config.table)
            save_table(shipped.rescaled(args.table_scale, {"reason": "simulated: a table off on this machine"}),
                       table_path)
    if args.fractions:
        space = load_space("densenas_32_small")
        # the range as the run's runtime runs the space: its shipped table when the config's is another runtime's
        runtime = get_runtime(args.runtime or config.runtime)
        table = load_table(config.table)
        if table_runtime(table) is not runtime or table.dtype != args.precision:
            table = shipped_table_for(space.name, runtime, args.precision) or table
        low, high = RoutingCost(space, table).bounds()
        budgets = [round(low + f * (high - low), 3) for f in args.fractions]
    else:
        budgets = args.budgets or [config.budget_ms]

    rows = []
    for budget in budgets:
        run_dir = runs / (f"budget-{budget:.3f}ms" + (f"-table-x{args.table_scale:g}" if args.table_scale else "")
                          + (f"-{args.runtime}" if args.runtime else "") + ("-int8" if args.precision == "int8" else ""))
        load_before = round(os.getloadavg()[0], 2)
        if not (run_dir / "report.json").is_file():
            started = time.time()
            resume = ["--resume"] if (run_dir / "config.yaml").is_file() else []
            code = hwnas(["run", args.config, "--out", str(run_dir), "--quiet", "--set", f"budget_ms={budget}",
                          "--set", f"table={table_path}", *(["--runtime", args.runtime] if args.runtime else []),
                          *(["--set", "export.quantize=int8"] if args.precision == "int8" else []), *resume])
            if code != 0:
                raise SystemExit(f"hwnas run failed at budget {budget} ms (exit {code})")
            print(f"budget {budget:.3f} ms: run took {time.time() - started:.0f} s", flush=True)
        row = summarize(run_dir, load_before)
        rows.append(row)
        print(f"budget {budget:.3f} ms: predicted {row['predicted_ms']:.3f}, measured {row['measured_ms']:.3f} "
              f"({row['measured_vs_budget_pct']:+.1f}%, {row['budget']}), supernet {row['search_end_val_acc']:.1%}, "
              f"test {row['test_acc']:.1%}, table: {row['table']['decision']}", flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "config": args.config, "table": table_path,
              "runtime": args.runtime or config.runtime, "precision": args.precision,
              "table_scale": args.table_scale, "budget_rule": "met when measured is within -10% / +5% of the budget",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
