"""DARTS, GDAS, PC-DARTS and P-DARTS against random cells on Fashion-MNIST, on the shared loops.

Each method searches with its quick recipe (configs/search/METHOD_digits.yaml) pointed at Fashion-MNIST
(`--set data.dataset=fashion-mnist data.train_subset=N`, 16x16 images as in the recipes), once per search
seed; each derived genotype, and random genotypes of the same space (uniform ops and inputs), is then
trained with the quick Fashion-MNIST recipe (configs/train/fashion-mnist.yaml, the same for every
network) and tested on the 10000 test images.

    python benchmarks/cell_methods_fmnist.py --out benchmarks/results/cell_methods_fmnist.json
    python benchmarks/cell_methods_fmnist.py --only work &     # workers share the searches and trainings
    python benchmarks/cell_methods_fmnist.py --only assemble   # the result file from what is finished

Every search and training keeps its result in its folder under --runs and is reused, so the benchmark
continues where it stopped. Needs the Debian package dataset-fashion-mnist, or --data-root FOLDER.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from hwnas.baselines import random_genotypes
from hwnas.config import TrainConfig, load_config
from hwnas.methods import SearchConfig
from hwnas.archs.genotype import Genotype
from hwnas.search import search
from hwnas.spaces.definition import load_space
from hwnas.train import train
from units import report, started, work

METHODS = ("darts", "gdas", "pcdarts", "pdarts")


def pending_units(args: argparse.Namespace, runs: Path):
    root = [f"data.root={args.data_root}"] if args.data_root else []
    train_config = load_config(TrainConfig, "configs/train/fashion-mnist.yaml", root)

    def training(name: str, genotype: Genotype):
        folder = runs / f"train-{name}"
        if not report(folder):
            yield folder, lambda: train(train_config, genotype, folder, resume=started(folder), quiet=True)

    for seed in range(args.search_seeds):
        for method in METHODS:
            folder = runs / f"search-{method}-s{seed}"
            searched = report(folder)
            if searched:
                yield from training(f"{method}-s{seed}", Genotype.from_dict(searched["arch"]))
                continue
            config = load_config(SearchConfig, f"configs/search/{method}_digits.yaml",
                                 ["data.dataset=fashion-mnist", f"data.train_subset={args.search_subset}",
                                  f"seed={seed}", *root])
            yield folder, lambda c=config, f=folder: search(c, f, resume=started(f), quiet=True)
    space = load_space("darts_cifar10")  # the DARTS cell space: 8 primitives, 4 nodes
    for i, genotype in enumerate(random_genotypes(space, args.random, seed=0)):
        yield from training(f"random{i}", genotype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/cell_methods_fmnist.json")
    parser.add_argument("--runs", default="benchmarks/runs/cell-methods-fmnist",
                        help="where the run folders go (their small files are committed, to continue elsewhere)")
    parser.add_argument("--search-subset", type=int, default=2000, help="training images the searches use")
    parser.add_argument("--search-seeds", type=int, default=3, help="searches per method")
    parser.add_argument("--random", type=int, default=8, help="random genotypes to train")
    parser.add_argument("--only", choices=["work", "assemble"])
    parser.add_argument("--data-root", help="Fashion-MNIST folder (default: the Debian package's)")
    args = parser.parse_args()
    runs = Path(args.runs)
    if args.only != "assemble":
        work(lambda: pending_units(args, runs))
    if args.only != "work":  # the result is written when asked for, not by each worker as it stops
        assemble(runs, args)


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def assemble(runs: Path, args: argparse.Namespace) -> None:
    """The result file from every finished run folder."""
    rows = []
    for method in METHODS:
        for seed in range(args.search_seeds):
            trained, searched = report(runs / f"train-{method}-s{seed}"), report(runs / f"search-{method}-s{seed}")
            if trained:
                rows.append({"kind": "method", "name": method, "seed": seed,
                             "search_seconds": searched["search_seconds"], **_row(trained)})
    for i in range(args.random):
        trained = report(runs / f"train-random{i}")
        if trained:
            rows.append({"kind": "random", "name": f"random{i}", "seed": None, "search_seconds": None, **_row(trained)})
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "genotype"}), flush=True)
    random = _stats([r["test_acc"] for r in rows if r["kind"] == "random"])
    methods = {}
    for method in METHODS:
        stats = _stats([r["test_acc"] for r in rows if r["name"] == method])
        if stats["mean"] is not None and random["std"] is not None:
            stats["beats_random_by_one_std"] = stats["mean"] > random["mean"] + random["std"]
            stats["beats_random_mean"] = stats["mean"] > random["mean"]
        methods[method] = stats
    result = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "search_recipes": f"configs/search/METHOD_digits.yaml on fashion-mnist, {args.search_subset} "
                                f"training images, seeds 0..{args.search_seeds - 1}",
              "train_recipe": "configs/train/fashion-mnist.yaml (one training seed, 0)",
              "random": random, "methods": methods, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"random": random, "methods": methods}))


def _row(trained: dict) -> dict:
    return {"params": trained["params"], "test_acc": trained["test_acc"], "train_seconds": trained["train_seconds"],
            "genotype": trained["arch"]}


if __name__ == "__main__":
    main()
