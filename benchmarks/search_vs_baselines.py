"""Searched networks against random and hand-designed ones of the same space, at the same latency.

    python benchmarks/search_vs_baselines.py                        # everything, one unit after another
    python benchmarks/search_vs_baselines.py --only work &          # or workers sharing the searches and
    python benchmarks/search_vs_baselines.py --only work &          # trainings (each claims its unit)
    python benchmarks/search_vs_baselines.py --only measure         # latencies, on a quiet machine
    python benchmarks/search_vs_baselines.py --only assemble        # the JSON and the plot from what is done

At three budgets inside the latency range that all three families reach (the hand-designed family,
k3 t6 everywhere, tops out below the space's largest latency), by the latency table of this machine:

- searched: DenseNAS under the budget (configs/search/densenas_fmnist_more_images.yaml: the supernet
  trained on 18000 images, no weight decay on the architecture weights), one search per seed;
- random: architectures drawn uniformly among those the table predicts within [0.95 B, B], where the
  search derives its network (its `budget_slack`);
- hand-designed: the MobileNetV2-like member of the space nearest the budget (hwnas/baselines.py).

Every network is trained with one recipe (configs/train/densenas_fmnist_long.yaml) and tested on the 10000
Fashion-MNIST test images; searched and hand-designed networks with several training seeds. Every unit
(a search, a training, the latency measurement) keeps its result in its folder under --runs and is
reused, so the benchmark continues where it stopped. The plan (budgets, baseline architectures, the two
recipes and their `--set-search/--set-train` overrides) is fixed in RUNS/plan.json at the first start, so
a resumed benchmark cannot mix two recipes. `--device cuda` and the overrides give a larger protocol on a
GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from scipy.stats import ttest_ind

from hwnas.baselines import hand_designed, hand_designed_family, layers, random_routed_archs
from hwnas.config import TrainConfig, load_config, resolve_path
from hwnas.methods import SearchConfig
from hwnas.latency.check import same_host, time_networks
from hwnas.latency.cost import RoutingCost
from hwnas.latency.networks import build_network
from hwnas.latency.table import load_table
from hwnas.archs.routed import RoutedArch
from hwnas.search import search
from hwnas.spaces.definition import load_space
from hwnas.train import train
from profilers.measure import cpu_model, host_identity
from units import report, started, work

FAMILIES = ("searched", "random", "hand_designed")
# the recipes of a new plan, unless --search-config / --train-config name others
RECIPES = {"search_config": "configs/search/densenas_fmnist_more_images.yaml",
           "train_config": "configs/train/densenas_fmnist_long.yaml"}
# overrides of those recipes, fixed in the plan with them (a plan without them has none)
OVERRIDES = ("set_search", "set_train")


def make_plan(args: argparse.Namespace, table_path: str) -> dict:
    """Budgets and baseline architectures, fixed at the first start."""
    search_config = load_config(SearchConfig, args.search_config, [f"method.table={table_path}"])
    space = load_space(search_config.method.space)
    cost = RoutingCost(space, load_table(table_path))
    hand_ms = [cost.exact(arch) for arch in hand_designed_family(space)]
    space_low, space_high = cost.bounds()
    low, high = max(space_low, min(hand_ms)), min(space_high, max(hand_ms))
    budgets = []
    # the baselines lie where the search derives its network: within [(1 - budget_slack) B, B]
    slack = search_config.method.budget_slack
    for k, fraction in enumerate(args.fractions):
        budget = round(low + fraction * (high - low), 4)
        hand = hand_designed(space, cost, budget, slack, under=True)
        randoms = random_routed_archs(space, cost, budget, args.random, seed=k, tolerance=slack, under=True)
        budgets.append({"budget_ms": budget, "fraction_of_common_range": fraction,
                        "hand_designed": hand.to_dict(), "random": [a.to_dict() for a in randoms]})
    return {"space": space.name, "table": table_path, "space_range_ms": [round(space_low, 4), round(space_high, 4)],
            "hand_designed_range_ms": [round(min(hand_ms), 4), round(max(hand_ms), 4)],
            "common_range_ms": [round(low, 4), round(high, 4)], "search_config": args.search_config,
            "train_config": args.train_config, **{key: getattr(args, key) for key in OVERRIDES}, "budgets": budgets}


def load_plan(args: argparse.Namespace, runs: Path, table_path: str) -> dict:
    path = runs / "plan.json"
    if path.is_file():
        plan = json.loads(path.read_text())
        if len(plan["budgets"]) != len(args.fractions) or plan["table"] != table_path:
            sys.exit(f"{path} was planned with other budgets or another table; use another --runs")
        # the recipes are part of the plan: a resumed benchmark must not mix two of them
        for key in RECIPES:
            given = getattr(args, key)
            if given is not None and given != plan[key]:
                sys.exit(f"{path} was planned with {key} {plan[key]}, not {given}; drop the option or use another --runs")
        for key in OVERRIDES:
            given, planned = getattr(args, key), plan.get(key, [])
            if given and given != planned:
                sys.exit(f"{path} was planned with --{key.replace('_', '-')} {' '.join(planned) or '(none)'}, not "
                         f"{' '.join(given)}; drop the option or use another --runs")
            setattr(args, key, planned)
        return plan
    for key, default in RECIPES.items():
        setattr(args, key, getattr(args, key) or default)
    plan = make_plan(args, table_path)
    runs.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2) + "\n")
    return plan


def search_folder(runs: Path, k: int, seed: int) -> Path:
    return runs / f"b{k}-search-s{seed}"


def train_folder(runs: Path, k: int, name: str, seed: int) -> Path:
    return runs / f"b{k}-train-{name}-t{seed}"


def network_id(net: dict) -> str:
    return f"b{net['k']}-{net['name']}"


def networks(plan: dict, runs: Path, args: argparse.Namespace) -> list[dict]:
    """Every network of the benchmark known so far: family, budget index, name, architecture, training seeds."""
    found = []
    for k, budget in enumerate(plan["budgets"]):
        for seed in range(args.search_seeds):
            searched = report(search_folder(runs, k, seed))
            if searched:
                found.append({"family": "searched", "k": k, "name": f"search-s{seed}", "arch": searched["arch"],
                              "train_seeds": args.train_seeds, "search_seconds": searched["search_seconds"],
                              "search_end_val_acc": searched["final"].get("val_acc")})
        found.append({"family": "hand_designed", "k": k, "name": "hand", "arch": budget["hand_designed"],
                      "train_seeds": args.train_seeds})
        found += [{"family": "random", "k": k, "name": f"random{i}", "arch": arch, "train_seeds": 1}
                  for i, arch in enumerate(budget["random"])]
    return found


def pending_units(plan: dict, runs: Path, args: argparse.Namespace):
    """(folder, work) for each search and training not finished yet, budget by budget; a searched network's
    trainings appear once its search is done."""
    nets = networks(plan, runs, args)
    for k, budget in enumerate(plan["budgets"]):
        if args.budgets is not None and k not in args.budgets:
            continue
        for seed in range(args.search_seeds):
            folder = search_folder(runs, k, seed)
            if not report(folder):
                config = load_config(SearchConfig, plan["search_config"], [
                    f"method.table={plan['table']}", f"method.budget_ms={budget['budget_ms']}", f"seed={seed}",
                    f"device={args.device}", *args.set_search])
                # the table was profiled on this machine; timing its networks beside a busy worker would mislead
                yield folder, lambda c=config, f=folder: search(c, f, resume=started(f), quiet=True, check_table=False)
        for net in (n for n in nets if n["k"] == k):
            for seed in range(net["train_seeds"]):
                folder = train_folder(runs, k, net["name"], seed)
                if not report(folder):
                    config = load_config(TrainConfig, plan["train_config"],
                                         [f"seed={seed}", f"device={args.device}", *args.set_train])
                    arch = RoutedArch.from_dict(net["arch"])
                    yield folder, lambda c=config, a=arch, f=folder: train(c, a, f, resume=started(f), quiet=True)


def measure(plan: dict, runs: Path, args: argparse.Namespace) -> None:
    """Each network's latency here, end to end as `hwnas export` times it, in several rounds (the median kept:
    this machine's speed drifts by tens of percent from one second to the next)."""
    load = os.getloadavg()[0]
    if load > args.max_load:
        sys.exit(f"load average {load:.2f} > {args.max_load}: measure latencies on a quiet machine")
    table = load_table(plan["table"])
    space = load_space(plan["space"])
    path = runs / "latency.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    # rounds add up only on the same host (its instruction-set fingerprint: hosts that share a CPU model
    # string ran these networks 2x apart); another host starts the measurement afresh
    host = host_identity()["cpu_flags"]
    rounds: dict[str, list[float]] = earlier["rounds"] if earlier.get("host_fingerprint") == host else {}
    table_here, table_differs = same_host(table)
    models = {network_id(n): build_network(space, RoutedArch.from_dict(n["arch"])) for n in networks(plan, runs, args)}
    for _ in range(args.rounds):
        for name, ms in time_networks(models, space, table, 100).items():
            rounds.setdefault(name, []).append(round(ms, 5))
    path.write_text(json.dumps({"cpu_model": cpu_model(), "host_fingerprint": host,
                                "table_cpu_model": table.meta.get("device", {}).get("cpu_model"),
                                "table_same_host": table_here, "table_differs": table_differs,
                                "load_average_1min_before": round(load, 2),
                                "load_average_1min_after": round(os.getloadavg()[0], 2),
                                "date": time.strftime("%Y-%m-%d %H:%M"), "rounds": rounds}, indent=2) + "\n")


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4) if values else None,
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None, "n": len(values)}


def searched_above_random_p(entry: dict) -> float | None:
    """One-sided Welch t-test that the searched networks are more accurate than the random ones, a network
    (its mean over training seeds) per sample: the training seeds of one network are not independent draws."""
    searched, rand = ([statistics.mean(row["test_acc"]) for row in entry[family]["networks"] if row["test_acc"]]
                      for family in ("searched", "random"))
    if len(searched) < 2 or len(rand) < 2:
        return None
    return round(float(ttest_ind(searched, rand, equal_var=False, alternative="greater").pvalue), 3)


def assemble(plan: dict, runs: Path, args: argparse.Namespace) -> dict:
    table = load_table(plan["table"])
    space = load_space(plan["space"])
    cost = RoutingCost(space, table)
    # the table of the machine that measured, where it differs from the plan's (predictions beside measurements)
    host_cost = RoutingCost(space, load_table(args.host_table)) if args.host_table else None
    latency_path = runs / "latency.json"
    latency = json.loads(latency_path.read_text()) if latency_path.is_file() else {"rounds": {}}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "dataset": "fashion-mnist (test: all 10000 images)",
              **{k: plan[k] for k in ("space", "table", "space_range_ms", "hand_designed_range_ms",
                                      "common_range_ms", "search_config", "train_config")},
              **{key: getattr(args, key) for key in OVERRIDES},
              "search_seeds": args.search_seeds, "train_seeds": args.train_seeds, "random_per_budget": args.random,
              "latency_measurement": {k: v for k, v in latency.items() if k != "rounds"},
              **({"host_table": args.host_table} if args.host_table else {}), "budgets": []}
    nets = networks(plan, runs, args)
    for k, budget in enumerate(plan["budgets"]):
        entry = {"budget_ms": budget["budget_ms"], "fraction_of_common_range": budget["fraction_of_common_range"]}
        for family in FAMILIES:
            rows, accs = [], []
            for net in (n for n in nets if n["k"] == k and n["family"] == family):
                arch = RoutedArch.from_dict(net["arch"])
                reports = [report(train_folder(runs, k, net["name"], s)) for s in range(net["train_seeds"])]
                test = [r["test_acc"] for r in reports if r]
                measured = latency["rounds"].get(network_id(net))
                rows.append({"name": net["name"], "arch": str(arch), "layers": layers(arch),
                             "predicted_ms": round(cost.exact(arch), 4),
                             **({"predicted_ms_host_table": round(host_cost.exact(arch), 4)} if host_cost else {}),
                             "measured_ms": round(statistics.median(measured), 4) if measured else None,
                             "test_acc": test, "params": reports[0]["params"] if reports[0] else None,
                             **{key: net[key] for key in ("search_seconds", "search_end_val_acc") if key in net}})
                accs += test
            entry[family] = {**_stats(accs), "networks": rows}
        done = [entry[f]["mean"] for f in FAMILIES]
        if None not in done and entry["random"]["std"] is not None:
            entry["searched_beats_random_by_one_std"] = (entry["searched"]["mean"]
                                                         > entry["random"]["mean"] + entry["random"]["std"])
            entry["searched_beats_hand_designed"] = entry["searched"]["mean"] > entry["hand_designed"]["mean"]
            entry["searched_above_random_p"] = searched_above_random_p(entry)
        result["budgets"].append(entry)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    plot(result, Path(args.out).with_suffix(".png"))
    return result


def plot(result: dict, path: Path) -> None:
    """Accuracy against measured latency (predicted where not measured yet), one colour per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"searched": "tab:red", "random": "tab:gray", "hand_designed": "tab:blue"}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for family, colour in colours.items():
        xs, ys = [], []
        for entry in result["budgets"]:
            for row in entry[family]["networks"]:
                if row["test_acc"]:
                    xs.append(row["measured_ms"] or row["predicted_ms"])
                    ys.append(100 * statistics.mean(row["test_acc"]))
        ax.scatter(xs, ys, c=colour, label=family.replace("_", "-"), alpha=0.8, edgecolors=colour)
    measured = any(row["measured_ms"] for e in result["budgets"] for f in colours for row in e[f]["networks"])
    # the budgets are table latencies: they mark the x axis only where it is in the table's milliseconds
    if not measured or result["latency_measurement"].get("table_same_host"):
        for entry in result["budgets"]:
            ax.axvline(entry["budget_ms"], color="0.85", lw=1, zorder=0)
    ax.set_xlabel("latency, ms (measured end to end)" if measured else "latency, ms (predicted by the table)")
    ax.set_ylabel("Fashion-MNIST test accuracy, % (mean over training seeds)")
    ax.set_title(f"{result['space']}: searched vs random vs hand-designed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/search_vs_baselines.json")
    parser.add_argument("--runs", default="benchmarks/runs/svb-arch-wd0",
                        help="the units' folders; their small files (reports, configs, metrics) are committed so the "
                             "benchmark continues in a fresh checkout, checkpoints and weights are not")
    parser.add_argument("--table", default="latency_tables/amd-epyc-2core-ort-1thread/densenas_32_small.csv",
                        help="the latency table of the machine the networks are measured on")
    parser.add_argument("--host-table", help="the latency table of the machine the latencies were measured on, when "
                                             "it is not --table's: its predictions are reported beside them")
    parser.add_argument("--search-config", help=f"a new plan's search recipe ({RECIPES['search_config']})")
    parser.add_argument("--train-config",
                        help=f"a new plan's training recipe for every network ({RECIPES['train_config']}; "
                             "configs/train/densenas_fmnist.yaml: the first, shorter and noisier one)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5, 0.9],
                        help="budgets as fractions of the latency range all three families reach")
    parser.add_argument("--budgets", type=int, nargs="+",
                        help="work only on these budgets of the plan (0 is the tightest); all by default")
    parser.add_argument("--search-seeds", type=int, default=3)
    parser.add_argument("--train-seeds", type=int, default=2, help="for the searched and hand-designed networks")
    parser.add_argument("--random", type=int, default=5, help="random networks per budget (one training seed each)")
    parser.add_argument("--only", choices=["work", "measure", "assemble"],
                        help="work: the searches and trainings (start it twice for two workers)")
    parser.add_argument("--rounds", type=int, default=5, help="latency measurement rounds")
    parser.add_argument("--max-load", type=float, default=0.5, help="the quiet machine's load average, at most")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set-search", nargs="*", default=[], help="a new plan's overrides of the search recipe")
    parser.add_argument("--set-train", nargs="*", default=[], help="a new plan's overrides of the training recipe")
    args = parser.parse_args()
    runs = Path(args.runs)
    plan = load_plan(args, runs, str(resolve_path(args.table)))
    if args.only in (None, "work"):
        work(lambda: pending_units(plan, runs, args))
    if args.only in (None, "measure"):
        measure(plan, runs, args)
    if args.only in ("work", "measure"):  # the result is written when asked for, not by each step
        return
    result = assemble(plan, runs, args)
    for entry in result["budgets"]:
        print(json.dumps({"budget_ms": entry["budget_ms"], **{f: {k: entry[f][k] for k in ("mean", "std", "n")}
                                                              for f in FAMILIES}}))


if __name__ == "__main__":
    main()
