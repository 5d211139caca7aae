"""Does the supernet's shared-weight accuracy rank a search's candidates as training them does?

A DenseNAS search with `method.derive_candidates` tests each candidate with the supernet's shared weights
and keeps the most accurate. This trains every candidate of finished searches with the benchmark's one
recipe and compares:

- the Kendall tau between the shared-weight accuracy and the test accuracy after training;
- the trained candidates' mean (networks drawn from the search's distribution within the budget window)
  against the random networks of the same window (drawn uniformly);
- the kept candidate and the most probable one against the candidates' mean.

    python benchmarks/candidate_ranking.py --runs benchmarks/runs/svb-b0-shared-weights --only work &   # twice
    python benchmarks/candidate_ranking.py --runs benchmarks/runs/svb-b0-shared-weights --only assemble

Each training keeps its result in its folder (RUNS/bK-candidates-sS/cI) and is reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from scipy.stats import kendalltau

from hwnas.config import TrainConfig, load_config
from hwnas.archs.routed import RoutedArch
from hwnas.train import train
from units import report, started, work


def candidates(runs: Path, k: int, seed: int) -> list[dict]:
    searched = report(runs / f"b{k}-search-s{seed}")
    return searched["candidates"] if searched else []


def folder(runs: Path, k: int, seed: int, i: int) -> Path:
    return runs / f"b{k}-candidates-s{seed}" / f"c{i}"


def pending_units(args: argparse.Namespace, runs: Path):
    config = load_config(TrainConfig, args.train_config, ["seed=0", f"device={args.device}"])
    for seed in args.search_seeds:
        for i, row in enumerate(candidates(runs, args.budget, seed)):
            out = folder(runs, args.budget, seed, i)
            if not report(out):
                arch = RoutedArch.from_dict(row["arch"])
                yield out, lambda a=arch, f=out: train(config, a, f, resume=started(f), quiet=True)


def assemble(args: argparse.Namespace, runs: Path) -> dict:
    randoms = [r["test_acc"] for r in (report(p) for p in sorted(runs.glob(f"b{args.budget}-train-random*-t0"))) if r]
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "runs": str(runs), "budget_index": args.budget,
              "train_config": args.train_config, "training_seed": 0,
              "random": {"mean": statistics.mean(randoms), "std": statistics.stdev(randoms), "n": len(randoms)}
              if len(randoms) > 1 else None, "searches": []}
    for seed in args.search_seeds:
        rows = []
        for i, row in enumerate(candidates(runs, args.budget, seed)):
            trained = report(folder(runs, args.budget, seed, i))
            rows.append({"arch": row["arch_text"], "predicted_ms": row["predicted_ms"],
                         "shared_weight_acc": row["shared_weight_acc"], "most_probable": row["most_probable"],
                         "kept": row["kept"], "test_acc": trained["test_acc"] if trained else None})
        done = [r for r in rows if r["test_acc"] is not None]
        entry = {"search_seed": seed, "candidates": len(rows), "trained": len(done), "rows": rows}
        if len(done) > 2:
            tau = kendalltau([r["shared_weight_acc"] for r in done], [r["test_acc"] for r in done])
            accs = [r["test_acc"] for r in done]
            entry.update(kendall_tau=round(float(tau.statistic), 3), kendall_p=round(float(tau.pvalue), 3),
                         trained_mean=round(statistics.mean(accs), 4), trained_std=round(statistics.stdev(accs), 4),
                         trained_best=max(accs),
                         kept_test_acc=next((r["test_acc"] for r in done if r["kept"]), None),
                         most_probable_test_acc=next((r["test_acc"] for r in done if r["most_probable"]), None))
        result["searches"].append(entry)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="a search_vs_baselines.py runs folder whose searches used "
                                                      "method.derive_candidates")
    parser.add_argument("--budget", type=int, default=0, help="the budget's index in the plan")
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-config", default="configs/train/densenas_fmnist.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["work", "assemble"])
    parser.add_argument("--out", default="benchmarks/results/candidate_ranking.json")
    args = parser.parse_args()
    runs = Path(args.runs)
    if args.only in (None, "work"):
        work(lambda: pending_units(args, runs))
    if args.only in (None, "assemble"):
        result = assemble(args, runs)
        for entry in result["searches"]:
            print(json.dumps({k: v for k, v in entry.items() if k != "rows"}))


if __name__ == "__main__":
    main()
