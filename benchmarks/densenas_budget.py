"""Does the budget hold? Quick DenseNAS searches on digits at five budgets across the feasible range of
the shipped 32x32 table; for each derived network: its table latency, and its latency measured end to
end with ONNX Runtime (1 thread, batch 1, the table's runner settings), against the budget.

    python benchmarks/densenas_budget.py --out benchmarks/results/densenas_budget.json

Searches run first (each `hwnas search densenas --budget-ms B` with configs/search/densenas_digits.yaml);
then every derived network is measured in the same interleaved rounds, on an otherwise quiet machine.
Accuracy after final training needs the training loop (issue 6) and is not measured here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hwnas.cli import main as hwnas
from hwnas.latency.cost import RoutingCost
from hwnas.latency.networks import build_network, input_shape
from hwnas.latency.table import load_table
from hwnas.latency.validate import network_calls
from hwnas.routed import RoutedArch
from hwnas.spaces.definition import load_space
from profilers import measure as timing

TABLE = "latency_tables/amd-epyc-2core-ort-1thread/densenas_32.csv"
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/densenas_budget.json")
    parser.add_argument("--runs", default="runs/budget-benchmark", help="where the search runs go")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS),
                        help="budgets as fractions of the way from the smallest to the largest latency")
    args = parser.parse_args()
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
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "table": TABLE, "feasible_ms": [low, high],
              "estimator": table.estimator, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
