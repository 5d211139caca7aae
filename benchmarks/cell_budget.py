"""Latency-aware cell search: does the budget hold for DARTS, GDAS, PC-DARTS and P-DARTS?

Each method searches with its quick digits recipe (capped at --steps steps per epoch) and
`--table darts_cifar10 --budget-ms B`, B at a
fraction of the way across the table's feasible range for the final CIFAR network (NetworkCIFAR C=36,
20 cells); the derived genotype's final network is then exported and its latency measured end to end
with ONNX Runtime (1 thread, batch 1, the table's statistic), against B.

    python benchmarks/cell_budget.py --out benchmarks/results/cell_budget.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hwnas.config import load_config
from hwnas.methods import SearchConfig
from hwnas.export import export
from hwnas.archs.genotype import Genotype
from hwnas.runs import write_json
from hwnas.latency.cost import CellCost
from hwnas.latency.table import load_table
from hwnas.search import search
from hwnas.spaces.definition import load_space

TABLE = "latency_tables/amd-epyc-2core-ort-1thread/darts_cifar10.csv"
METHODS = ("darts", "gdas", "pcdarts", "pdarts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/cell_budget.json")
    parser.add_argument("--runs", default="runs/cell-budget", help="where the search runs go")
    parser.add_argument("--fraction", type=float, default=0.3, help="budget: this far across the feasible range")
    parser.add_argument("--steps", type=int, default=6, help="search steps per epoch (the budget holds by the "
                                                              "derivation, so short searches suffice here)")
    args = parser.parse_args()
    cost = CellCost(load_space("darts_cifar10"), load_table(TABLE))
    low, high = cost.bounds()
    budget = round(low + args.fraction * (high - low), 3)
    rows = []
    for method in METHODS:
        config = load_config(SearchConfig, f"configs/search/{method}_digits.yaml",
                             [f"method.table={TABLE}", f"method.budget_ms={budget}",
                              f"search.steps_per_epoch={args.steps}"])
        started = time.perf_counter()
        report = search(config, Path(args.runs) / f"{method}-{budget}ms", quiet=True)
        genotype = Genotype.from_dict(report["arch"])
        with tempfile.TemporaryDirectory() as tmp:
            write_json(Path(tmp) / "arch.json", genotype.to_dict())
            exported = export(str(Path(tmp) / "arch.json"), Path(tmp) / "net.onnx", dataset="cifar10", table=TABLE)
        lat = exported["latency"]
        rows.append({"method": method, "budget_ms": budget, "predicted_ms": report["predicted_latency_ms"],
                     "measured_ms": lat["measured_ms"], "measured_vs_budget_pct": 100 * (lat["measured_ms"] / budget - 1),
                     "expected_latency_ms_by_epoch": report["expected_latency_ms_by_epoch"],
                     "search_seconds": round(time.perf_counter() - started, 1), "genotype": genotype.to_dict()})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "genotype"}), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "table": TABLE, "feasible_ms": [low, high],
              "estimator": cost.table.estimator, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
