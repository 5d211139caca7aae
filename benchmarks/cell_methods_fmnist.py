"""DARTS, GDAS, PC-DARTS and P-DARTS against random cells on Fashion-MNIST, on the shared loops.

Each method searches with its quick recipe (configs/search/METHOD_digits.yaml) pointed at Fashion-MNIST
(`--set data.dataset=fashion-mnist data.train_subset=N`, 16x16 images as in the recipes); each derived
genotype, and five random genotypes of the same space, is then trained with the quick Fashion-MNIST
recipe (configs/train/fashion-mnist.yaml, the same for every network) and tested on the 10000 test images.

    python benchmarks/cell_methods_fmnist.py --out benchmarks/results/cell_methods_fmnist.json

Needs the Debian package dataset-fashion-mnist, or --data-root FOLDER with the idx files.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from hwnas.config import SearchConfig, TrainConfig, load_config
from hwnas.genotypes import Genotype
from hwnas.latency.networks import sample_genotype
from hwnas.search import search
from hwnas.spaces.definition import load_space
from hwnas.train import train

METHODS = ("darts", "gdas", "pcdarts", "pdarts")


def _done(folder: Path) -> dict | None:
    report = folder / "report.json"
    return json.loads(report.read_text()) if report.is_file() else None


def _resume(folder: Path) -> bool:
    return (folder / "config.yaml").is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/cell_methods_fmnist.json")
    parser.add_argument("--runs", default="runs/fmnist-benchmark", help="where the run folders go")
    parser.add_argument("--search-subset", type=int, default=2000, help="training images the searches use")
    parser.add_argument("--random", type=int, default=5, help="random genotypes to train")
    parser.add_argument("--only", choices=["methods", "random"],
                        help="run only this part (two processes can share the work); the result file is "
                             "assembled from every finished run folder")
    parser.add_argument("--data-root", help="Fashion-MNIST folder (default: the Debian package's)")
    args = parser.parse_args()
    runs = Path(args.runs)
    root = [f"data.root={args.data_root}"] if args.data_root else []
    train_config = load_config(TrainConfig, "configs/train/fashion-mnist.yaml", root)

    def trained(name: str, genotype: Genotype) -> None:
        folder = runs / f"train-{name}"
        if not _done(folder):
            train(train_config, genotype, folder, resume=_resume(folder), quiet=True)

    if args.only != "random":
        for method in METHODS:
            config = load_config(SearchConfig, f"configs/search/{method}_digits.yaml",
                                 ["data.dataset=fashion-mnist", f"data.train_subset={args.search_subset}", *root])
            folder = runs / f"search-{method}"
            searched = _done(folder) or search(config, folder, resume=_resume(folder), quiet=True)
            trained(method, Genotype.from_dict(searched["arch"]))
    if args.only != "methods":
        space = load_space("darts_cifar10")  # the DARTS cell space: 8 primitives, 4 nodes
        rng = random.Random(0)
        for i in range(args.random):
            trained(f"random{i}", sample_genotype(space, rng))
    assemble(runs, args)


def assemble(runs: Path, args: argparse.Namespace) -> None:
    """The result file from every finished run folder."""
    rows = []
    for kind, names in (("method", METHODS), ("random", [f"random{i}" for i in range(args.random)])):
        for name in names:
            report = _done(runs / f"train-{name}")
            if report is None:
                continue
            searched = _done(runs / f"search-{name}") if kind == "method" else None
            rows.append({"kind": kind, "name": name, "search_seconds": searched and searched["search_seconds"],
                         "params": report["params"], "test_acc": report["test_acc"],
                         "train_seconds": report["train_seconds"], "genotype": report["arch"]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "genotype"}), flush=True)
    random_acc = [r["test_acc"] for r in rows if r["kind"] == "random"]
    summary = {}
    if len(random_acc) >= 2:
        mean = statistics.mean(random_acc)
        summary = {"random_mean_acc": mean, "random_std_acc": statistics.stdev(random_acc),
                   "random_min_acc": min(random_acc), "random_max_acc": max(random_acc),
                   "beats_random_mean": {r["name"]: r["test_acc"] > mean for r in rows if r["kind"] == "method"}}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "search_recipes": "configs/search/METHOD_digits.yaml on "
              f"fashion-mnist, {args.search_subset} training images", "train_recipe": "configs/train/fashion-mnist.yaml",
              "rows": rows, **summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
