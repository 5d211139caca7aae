"""Does the budget hold? Quick DenseNAS searches on digits at five budgets across the feasible range of
the shipped 32x32 table; for each derived network: its table latency, and its latency measured end to
end with ONNX Runtime (1 thread, batch 1, the table's runner settings), against the budget.

    python benchmarks/densenas_budget.py --out benchmarks/results/densenas_budget.json

Searches run first (each `hwnas search densenas --budget-ms B` with configs/search/densenas_digits.yaml);
then every derived network is measured in the same interleaved rounds, on an otherwise quiet machine;
then each is trained with the quick recipe (configs/train/densenas_digits.yaml) and its digits test
accuracy recorded. `--train-only` adds the accuracies to an existing result file without searching again.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hwnas.cli import main as hwnas
from hwnas.config import TrainConfig, load_config
from hwnas.latency.cost import RoutingCost
from hwnas.latency.networks import build_network, input_shape
from hwnas.latency.table import load_table
from hwnas.latency.validate import network_calls
from hwnas.routed import RoutedArch
from hwnas.spaces.definition import load_space
from hwnas.train import train
from profilers import measure as timing

TABLE = "latency_tables/amd-epyc-2core-ort-1thread/densenas_32.csv"
TRAIN_RECIPE = "configs/train/densenas_digits.yaml"
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/densenas_budget.json")
    parser.add_argument("--runs", default="runs/budget-benchmark", help="where the search runs go")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS),
                        help="budgets as fractions of the way from the smallest to the largest latency")
    parser.add_argument("--train-only", action="store_true", help="train the networks of an existing --out file")
    args = parser.parse_args()
    if args.train_only:
        report = json.loads(Path(args.out).read_text())
        train_rows(report["rows"])
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        return
    space, table = load_space("densenas_32"), load_table(TABLE)
    low, high = RoutingCost(space, table).bounds()
    rows = []
    for fraction in args.fractions:
        budget = round(low + fraction * (high - low), 3)
        out = Path(args.runs) / f"budget-{budget:.3f}ms-{time.strftime('%H%M%S')}"
        started = time.time()
        assert hwnas(["search", "densenas", "--budget-ms", str(budget), "--out", str(out), "--quiet"]) == 0
        report = json.loads((out / "report.json").read_text())
        rows.append({"budget_ms": budget, "fraction": fraction, "predicted_ms": report["predicted_latency_ms"],
                     "arch": report["arch"], "arch_text": report["arch_text"], "search_seconds": time.time() - started,
                     "val_acc_supernet": report["final"].get("val_acc"), "run_dir": str(out)})
        print(f"budget {budget:.3f} ms: predicted {report['predicted_latency_ms']:.3f} ms", flush=True)

    torch.manual_seed(0)
    networks = {f"b{i}": build_network(space, RoutedArch.from_dict(r["arch"])) for i, r in enumerate(rows)}
    with tempfile.TemporaryDirectory() as tmp:
        calls, prepare = network_calls(networks, input_shape(space), "onnxruntime", int(table.meta["threads"]), Path(tmp))
        results = timing.measure(calls, warmup=int(table.meta["warmup"]), runs=int(table.meta["runs"]) * 2,
                                 prepare=prepare)
    for i, row in enumerate(rows):
        row["measured_ms"] = results[f"b{i}"][table.estimator]
        row["measured_median_ms"] = results[f"b{i}"]["median_ms"]
        row["measured_vs_budget_pct"] = 100 * (row["measured_ms"] / row["budget_ms"] - 1)
        row["predicted_within_budget"] = row["predicted_ms"] <= row["budget_ms"]
        print(f"budget {row['budget_ms']:.3f}  predicted {row['predicted_ms']:.3f}  measured {row['measured_ms']:.3f} "
              f"({row['measured_vs_budget_pct']:+.1f}%)", flush=True)
    train_rows(rows)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "table": TABLE, "feasible_ms": [low, high],
              "estimator": table.estimator, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def train_rows(rows: list[dict]) -> None:
    """Quick final training of each row's network on digits: test accuracy of the last epoch."""
    config = load_config(TrainConfig, TRAIN_RECIPE)
    for row in rows:
        out = Path(row["run_dir"] + "-train")
        report = train(config, RoutedArch.from_dict(row["arch"]), out, resume=(out / "config.yaml").is_file(), quiet=True)
        row.update(test_acc=report["test_acc"], train_seconds=report["train_seconds"], train_recipe=TRAIN_RECIPE,
                   params=report["params"], macs=report["macs"])
        print(f"budget {row['budget_ms']:.3f} ms: test accuracy {report['test_acc']:.2%}", flush=True)


if __name__ == "__main__":
    main()
