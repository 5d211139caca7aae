"""Latency-aware cell methods: the final network's latency as a loss and a budget."""

import itertools
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from hwnas.derive import budget_genotype, derive_genotype
from hwnas.errors import HwnasError
from hwnas.archs.genotype import ZOO, Genotype
from hwnas.latency.cost import CellCost
from hwnas.latency.keys import cell_space_keys
from hwnas.latency.table import load_table, make_table
from hwnas.spaces.definition import load_space, parse_space
from hwnas.supernets.cell import CELL_TYPES

from tiny import tiny_config

TABLE = "latency_tables/amd-epyc-2core-ort-1thread/darts_cifar10.csv"
OPS = ["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"]
TINY_CELLS = parse_space({"kind": "cell", "name": "tinycell", "input_size": 8, "init_channels": 4, "layers": 3,
                          "nodes": 2, "primitives": OPS}, "tiny cell space")


def integer_table(space):
    """Every key costs a distinct whole number of ms, no call overhead: DP buckets of 1 ms are exact."""
    keys = cell_space_keys(space)
    ms = [float(i % 7 + 1) for i in range(len(keys))]
    results = pd.DataFrame({"key": [k.name for k in keys], "median_ms": ms, "p10_ms": ms, "mean_ms": ms,
                            "std_ms": 0.1, "count": 50, "cv": 0.01}).set_index("key")
    return make_table(results, keys, {"space": space.name, "batch": 1, "runtime": "onnxruntime", "runtime_version": "x",
                                      "threads": 1, "call_overhead_ms": 0.0, "estimator": "p10_ms"})


def random_weights(nodes, ops, seed):
    gen = torch.Generator().manual_seed(seed)
    edges = sum(2 + n for n in range(nodes))
    return {kind: F.softmax(torch.randn(edges, len(ops), generator=gen), -1) for kind in CELL_TYPES}


def score(genotype, weights, primitives, nodes):
    total = 0.0
    for kind, pairs in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        for i, (op, state) in enumerate(pairs):
            edge = sum(2 + n for n in range(i // 2)) + state
            total += math.log(float(weights[kind][edge, primitives.index(op)]))
    return total


def test_exact_latency_is_the_sum_of_the_chosen_ops():
    cost = CellCost(load_space("darts_cifar10"), load_table(TABLE))
    genotype = ZOO["DARTS_V2"]
    by_hand = cost.fixed + sum(cost.op_ms(kind, state, op)
                               for kind, pairs in (("normal", genotype.normal), ("reduce", genotype.reduce))
                               for op, state in pairs)
    assert cost.exact(genotype) == pytest.approx(by_hand)
    low, high = cost.bounds()
    assert low < cost.exact(genotype) < high


def test_expected_latency_matches_the_formula_and_reaches_the_alphas():
    space = load_space("darts_cifar10")
    cost = CellCost(space, load_table(TABLE))
    alphas = {kind: torch.randn(14, 8, requires_grad=True) for kind in CELL_TYPES}
    primitives = {kind: [space.primitives] * 14 for kind in CELL_TYPES}
    expected = cost.expected({k: F.softmax(a, -1) for k, a in alphas.items()}, primitives)
    by_hand = cost.fixed
    for kind in CELL_TYPES:
        p = F.softmax(alphas[kind].detach(), -1)
        edge = 0
        for node in range(4):
            for state in range(node + 2):
                kept = [(p[edge, k].item(), cost.op_ms(kind, state, op)) for k, op in enumerate(space.primitives)
                        if op != "none"]
                by_hand += 2 / (node + 2) * sum(w * ms for w, ms in kept) / sum(w for w, _ in kept)
                edge += 1
    assert expected.item() == pytest.approx(by_hand, rel=1e-5)
    expected.backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas.values())


def test_loose_budget_gives_the_darts_rule():
    space = load_space("darts_cifar10")
    cost = CellCost(space, load_table(TABLE))
    primitives = {kind: [space.primitives] * 14 for kind in CELL_TYPES}
    for seed in range(3):
        weights = random_weights(4, space.primitives, seed)
        assert budget_genotype(weights, primitives, 4, cost, cost.bounds()[1] + 1) == \
            derive_genotype(weights, primitives, 4)


@pytest.mark.parametrize("fraction, skip_limit", [(0.3, None), (0.6, None), (0.45, 1)])
def test_budget_genotype_is_the_best_genotype_under_the_budget(fraction, skip_limit):
    cost = CellCost(TINY_CELLS, integer_table(TINY_CELLS))
    low, high = cost.bounds()
    budget = float(round(low + fraction * (high - low)))
    primitives = {kind: [OPS] * 5 for kind in CELL_TYPES}
    weights = random_weights(2, OPS, 7)
    chosen = budget_genotype(weights, primitives, 2, cost, budget, resolution=int(budget - cost.fixed),
                             skip_limit=skip_limit)

    def cells():
        ops = [op for op in OPS if op != "none"]
        node0 = [((a, 0), (b, 1)) for a in ops for b in ops]
        node1 = [((a, i), (b, j)) for i, j in itertools.combinations(range(3), 2) for a in ops for b in ops]
        return [n0 + n1 for n0 in node0 for n1 in node1]

    def latency_and_score(kind, pairs):
        ms = sum(cost.op_ms(kind, state, op) for op, state in pairs)
        return ms, sum(math.log(float(weights[kind][sum(2 + n for n in range(i // 2)) + state, OPS.index(op)]))
                       for i, (op, state) in enumerate(pairs))

    normals = [latency_and_score("normal", c) for c in cells()
               if skip_limit is None or sum(op == "skip_connect" for op, _ in c) <= skip_limit]
    reduces = [latency_and_score("reduce", c) for c in cells()]
    best = max(sn + sr for mn, sn in normals for mr, sr in reduces if cost.fixed + mn + mr <= budget)
    assert cost.exact(chosen) <= budget
    assert score(chosen, weights, OPS, 2) == pytest.approx(best)
    if skip_limit is not None:
        assert sum(op == "skip_connect" for op, _ in chosen.normal) <= skip_limit


def test_budget_below_every_genotype_names_the_smallest_latency():
    cost = CellCost(TINY_CELLS, integer_table(TINY_CELLS))
    low, _ = cost.bounds()
    with pytest.raises(HwnasError, match=f"smallest feasible latency .* is {low:.3f} ms"):
        budget_genotype(random_weights(2, OPS, 0), {kind: [OPS] * 5 for kind in CELL_TYPES}, 2, cost, low - 0.5)


@pytest.mark.parametrize("method", ["darts", "gdas", "pcdarts", "pdarts"])
def test_cell_method_meets_its_budget(method, tmp_path):
    from hwnas.search import search

    cost = CellCost(load_space("darts_cifar10"), load_table(TABLE))
    low, high = cost.bounds()
    budget = low + 0.3 * (high - low)
    config = tiny_config(method, "method.supernet.nodes=4", f"method.table={TABLE}", f"method.budget_ms={budget}",
                         "search.epochs=2", "search.arch_start_epoch=0")
    report = search(config, tmp_path / "run", quiet=True)
    genotype = Genotype.from_dict(report["arch"])
    assert report["predicted_latency_ms"] == pytest.approx(cost.exact(genotype)) and cost.exact(genotype) <= budget
    assert len(report["expected_latency_ms_by_epoch"]) >= 2 and (tmp_path / "run" / "expected_latency.png").is_file()


def test_infeasible_cell_budget_is_one_line(tmp_path, capsys):
    from hwnas.cli import main

    assert main(["search", "darts", "--table", TABLE, "--budget-ms", "0.5", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "feasible range" in err and not (tmp_path / "run").exists()


def test_gdas_frc_refuses_a_latency_table(tmp_path, capsys):
    from hwnas.cli import main

    assert main(["search", "gdas-frc", "--table", TABLE, "--out", str(tmp_path / "run")]) == 2
    assert "fixed reduction cell" in capsys.readouterr().err
