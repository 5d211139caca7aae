"""DenseNAS: the routing supernet, the chained latency cost, Viterbi and the budget."""

import itertools
import json
import math
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.derive import RoutingWeights, budget_viterbi, draw, viterbi
from hwnas.errors import ConfigError, HwnasError
from hwnas.latency.cost import RoutingCost
from hwnas.latency.keys import routed_arch_keys
from hwnas.methods.densenas import rescale_sampled, sample_ops
from hwnas.archs.routed import RoutedArch, RoutedBlock
from hwnas.spaces.definition import parse_space
from hwnas.supernets.ranking import shared_weight_accuracy
from hwnas.supernets.routing import RoutingSupernet

from latency_helpers import load_tiny_space, synthetic_table


@pytest.fixture
def tiny(tmp_path):
    return load_tiny_space(tmp_path)


@pytest.fixture
def supernet(tiny):
    torch.manual_seed(0)
    model = RoutingSupernet(tiny, 10)
    with torch.no_grad():  # spread the weights so every choice matters
        for p in model.arch_parameters():
            p.copy_(torch.randn_like(p))
    return model


def all_archs(space):
    """Every (path, head ops, stack op indices) of the tiny space, with its RoutedArch."""
    def paths(block):
        if block == space.final_block:
            yield [block]
            return
        for t in space.targets(block):
            for rest in paths(t):
                yield [block, *rest]

    for path in paths(0):
        blocks = path[1:-1]
        for heads in itertools.product(range(len(space.head_ops)), repeat=len(blocks)):
            layer_choices = [itertools.product(range(len(space.stack_ops)), repeat=space.stack_layers[b]) for b in blocks]
            for stacks in itertools.product(*layer_choices):
                arch = RoutedArch(space.name, tuple(
                    RoutedBlock(b, space.head_ops[h], tuple(space.stack_ops[o] for o in s if space.stack_ops[o] != "skip_connect"))
                    for b, h, s in zip(blocks, heads, stacks)))
                yield path, heads, stacks, arch


def probability(space, model, path, heads, stacks):
    p = 1.0
    for a, k in zip(path, path[1:]):
        p *= float(model.edge_probs(a)[space.targets(a).index(k)])
    for a, k, h, s in zip(path, path[1:], heads, stacks):
        p *= float(F.softmax(model.head_alphas(k, a), -1)[h])
        for layer, o in enumerate(s):
            p *= float(F.softmax(model.stack_alphas(k)[layer], -1)[o])
    return p


def test_expected_latency_is_the_expectation_over_all_architectures(tiny, supernet):
    table, _ = synthetic_table(tiny)
    cost = RoutingCost(tiny, table)
    with torch.no_grad():
        by_hand = sum(probability(tiny, supernet, path, heads, stacks) * cost.exact(arch)
                      for path, heads, stacks, arch in all_archs(tiny))
        assert float(cost.expected(supernet)) == pytest.approx(by_hand, rel=1e-5)


def test_one_hot_weights_give_the_exact_latency(tiny, supernet):
    table, latency = synthetic_table(tiny)
    cost = RoutingCost(tiny, table)
    arch = RoutedArch("tiny", (RoutedBlock(1, "mbconv_k5_t6", ("mbconv_k3_t3",)), RoutedBlock(3, "mbconv_k3_t3")))
    with torch.no_grad():
        for p in supernet.arch_parameters():
            p.fill_(-1e4)
        supernet.betas["0"][0] = supernet.betas["1"][1] = supernet.betas["3"][0] = 0.0   # 0 -> 1 -> 3 -> final
        supernet.betas["2"][0] = 0.0
        supernet.alphas["head_1_0"][1] = supernet.alphas["head_3_1"][0] = 0.0
        supernet.alphas["head_2_0"][0] = supernet.alphas["head_2_1"][0] = supernet.alphas["head_3_2"][0] = 0.0
        supernet.alphas["stack_1_0"][0] = supernet.alphas["stack_1_1"][1] = supernet.alphas["stack_3_0"][1] = 0.0
    expected = cost.expected(supernet).item()
    # the table's prediction: each row less the 0.5 ms call overhead, plus the overhead once
    by_table = sum(latency[k.name] - 0.5 for _, k in routed_arch_keys(tiny, arch)) + 0.5
    assert expected == pytest.approx(by_table, rel=1e-6) and cost.exact(arch) == pytest.approx(by_table)


def test_latency_gradients_reach_betas_and_alphas(tiny, supernet):
    cost = RoutingCost(tiny, synthetic_table(tiny)[0])
    cost.expected(supernet).backward()
    for name, p in [*supernet.betas.items(), *supernet.alphas.items()]:
        if p.numel() > 1:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def weights_of(space, model):
    with torch.no_grad():
        return RoutingWeights(
            edges={b: model.edge_probs(b).tolist() for b in range(space.num_blocks)},
            heads={(j, i): F.softmax(model.head_alphas(j, i), -1).tolist() for j in range(1, space.num_blocks)
                   for i in space.sources(j)},
            stacks={j: [F.softmax(a, -1).tolist() for a in model.stack_alphas(j)]
                    for j in range(1, space.num_blocks) if space.stack_layers[j]})


def test_viterbi_finds_the_most_probable_path(tiny, supernet):
    w = weights_of(tiny, supernet)
    arch = viterbi(tiny, w)
    best_path = max({tuple(path) for path, *_ in all_archs(tiny)},
                    key=lambda path: math.prod(w.edges[a][tiny.targets(a).index(k)] for a, k in zip(path, path[1:])))
    assert arch.path == best_path[:-1]
    for prev, block in zip(arch.path, arch.blocks):  # argmax ops, skip layers dropped
        head = w.heads[block.block, prev]
        assert block.head == tiny.head_ops[head.index(max(head))]
        argmax = [tiny.stack_ops[l.index(max(l))] for l in w.stacks.get(block.block, [])]
        assert block.stack == tuple(op for op in argmax if op != "skip_connect")


def uniform_weights(space, edges=None):
    """Every choice equally likely (as at the start of a search); `edges` overrides some blocks' betas."""
    flat = lambda n: [1.0 / n] * n
    return RoutingWeights(
        edges={b: flat(len(space.targets(b))) for b in range(space.num_blocks)} | (edges or {}),
        heads={(j, i): flat(len(space.head_ops)) for j in range(1, space.num_blocks) for i in space.sources(j)},
        stacks={j: [flat(len(space.stack_ops))] * space.stack_layers[j]
                for j in range(1, space.num_blocks) if space.stack_layers[j]})


FLAT_SPACE = dict(kind="routing", name="flat", input_size=8, num_classes=10, widths=[8, 8, 8, 8], sizes=[8, 8, 8, 8],
                  stages=[0, 0, 0, 0], stack_layers=[0, 1, 0, 1], head_ops=["mbconv_k3_t3", "mbconv_k5_t6"],
                  stack_ops=["mbconv_k3_t3", "skip_connect"], final_width=16)


def test_viterbi_ties_go_to_the_nearest_source(tiny):
    # flat: block b feeds all later blocks. Uniform betas: the output is reached from block 0 directly
    # (1/4) or through block 3 (1/4 * 1), an exact tie that the DenseNAS release gives to block 3
    flat = parse_space(FLAT_SPACE, "flat")
    arch = viterbi(flat, uniform_weights(flat))
    assert arch == RoutedArch("flat", (RoutedBlock(3, "mbconv_k3_t3", ("mbconv_k3_t3",)),))
    # tiny: block 2 is reached from 0 (1/2) or from 1 (1/2 * 1); the tie goes to 1 and the path backtracks through it
    w = uniform_weights(tiny, edges={1: [1.0, 0.0]})
    assert viterbi(tiny, w).path == (0, 1, 2, 3)
    # budget_viterbi with a loose budget picks the same paths (its tied ops go to the cheaper one)
    for space, weights in ((flat, uniform_weights(flat)), (tiny, w)):
        cost = RoutingCost(space, synthetic_table(space)[0])
        assert budget_viterbi(space, weights, cost, cost.bounds()[1] + 1).path == viterbi(space, weights).path


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6, 1.0])
def test_budget_viterbi_is_the_best_architecture_under_the_budget(tiny, supernet, fraction):
    cost = RoutingCost(tiny, synthetic_table(tiny)[0])
    w = weights_of(tiny, supernet)
    low, high = cost.bounds()
    budget = low + fraction * (high - low)

    def score(path, heads, stacks):  # log P(path) + sum of log(p(op) / p(argmax op))
        s = sum(math.log(w.edges[a][tiny.targets(a).index(k)]) for a, k in zip(path, path[1:]))
        for a, k, h, st in zip(path, path[1:], heads, stacks):
            s += math.log(w.heads[k, a][h] / max(w.heads[k, a]))
            s += sum(math.log(w.stacks[k][l][o] / max(w.stacks[k][l])) for l, o in enumerate(st))
        return s

    feasible = [(score(p, h, s), arch) for p, h, s, arch in all_archs(tiny) if cost.exact(arch) <= budget + 1e-9]
    best_score, _ = max(feasible, key=lambda f: f[0])
    arch = budget_viterbi(tiny, w, cost, budget + 1e-9)
    assert cost.exact(arch) <= budget + 1e-9
    assert max(s for s, a in feasible if a == arch) == pytest.approx(best_score)
    if fraction == 1.0:  # no binding budget: the plain Viterbi answer
        assert arch == viterbi(tiny, w)
    # with a window [0.8 B, B]: the best architecture inside it, when there is one
    window = [(s, a) for s, a in feasible if cost.exact(a) >= 0.8 * budget]
    if window and fraction > 0:
        arch = budget_viterbi(tiny, w, cost, budget + 1e-9, min_ms=0.8 * budget)
        assert 0.8 * budget <= cost.exact(arch) <= budget + 1e-9
        assert max(s for s, a in window if a == arch) == pytest.approx(max(s for s, _ in window))


def test_bounds_are_the_cheapest_and_dearest_architectures(tiny):
    cost = RoutingCost(tiny, synthetic_table(tiny)[0])
    latencies = [cost.exact(arch) for *_, arch in all_archs(tiny)]
    assert cost.bounds() == (pytest.approx(min(latencies)), pytest.approx(max(latencies)))


def test_infeasible_budget_names_the_smallest_latency(tiny, supernet):
    cost = RoutingCost(tiny, synthetic_table(tiny)[0])
    low, _ = cost.bounds()
    with pytest.raises(HwnasError, match=f"smallest feasible latency with this table is {low:.3f} ms"):
        budget_viterbi(tiny, weights_of(tiny, supernet), cost, low * 0.9)


def test_budget_search_end_to_end_meets_the_budget(tiny, tmp_path):
    from hwnas.cli import main
    from hwnas.latency.table import save_table

    table, _ = synthetic_table(tiny)
    save_table(table, tmp_path / "tiny.csv")
    cost = RoutingCost(tiny, table)
    low, high = cost.bounds()
    budget = low + 0.4 * (high - low)
    args = ["search", "densenas", "--out", str(tmp_path / "run"), "--table", str(tmp_path / "tiny.csv"),
            "--budget-ms", str(budget), "--json", "--quiet",
            "--set", f"method.space={tmp_path / 'tiny.yaml'}", "--set", "search.epochs=2",
            "--set", "search.arch_start_epoch=1", "--set", "search.steps_per_epoch=2", "--set", "search.batch_size=8"]
    assert main(args) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    arch = RoutedArch.from_dict(report["arch"]).check(tiny)
    assert report["predicted_latency_ms"] == pytest.approx(cost.exact(arch)) and cost.exact(arch) <= budget
    assert len(report["expected_latency_ms_by_epoch"]) == 2 and (tmp_path / "run" / "expected_latency.png").is_file()


def test_infeasible_budget_fails_before_the_search(tmp_path, capsys):
    from hwnas.cli import main

    out = tmp_path / "run"
    assert main(["search", "densenas", "--budget-ms", "0.001", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "smallest latency" in err and "feasible range" in err
    assert not out.exists()


def test_arch_weight_heatmaps_name_ops_and_blocks(tiny, supernet, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from hwnas.config import build_config
    from hwnas.methods import SearchConfig
    from hwnas.methods import get_method
    from hwnas.ops.cell import PRIMITIVES
    from hwnas.plots import plot_arch_weights

    config = build_config(SearchConfig, {"method": {"name": "densenas", "space": str(tmp_path / "tiny.yaml"),
                                                    "latency_loss": "none"}}, "test")
    method = get_method("densenas")(config, 10, 3)
    weights = json.dumps(method.arch_weights(supernet))
    history = [{"stage": "search", "epoch": e, "arch_weights": weights} for e in (1, 2, 3)]
    figures = {}  # keep each figure open to read its axes
    monkeypatch.setattr(plt, "close", lambda fig: figures.setdefault(fig.get_suptitle().split(": ")[-1], fig))
    paths = plot_arch_weights(history, tmp_path, column_names=PRIMITIVES)
    assert [p.name for p in paths] == ["arch_weights_head.png", "arch_weights_stack.png"]
    assert all(p.is_file() for p in paths)

    def axis_labels(kind):
        *panels, _colorbar = figures[kind].axes
        assert [ax.get_title() for ax in panels] == ["search ep 1", "search ep 2", "search ep 3"]
        first, second = panels[:2]
        assert [t.get_text() for t in second.get_yticklabels()] == [""] * len(second.get_yticks())  # first panel only
        return [t.get_text() for t in first.get_xticklabels()], [t.get_text() for t in first.get_yticklabels()], first

    columns, rows, ax = axis_labels("head")
    assert columns == ["k3_t3", "k5_t6"]  # tiny's head_ops, mbconv_ dropped
    assert rows == ["block 1 <- 0", "block 2 <- 0", "block 2 <- 1", "block 3 <- 1", "block 3 <- 2"]
    # each labelled row holds that branch's head probabilities
    for r, (j, i) in enumerate([(1, 0), (2, 0), (2, 1), (3, 1), (3, 2)]):
        expected = F.softmax(supernet.head_alphas(j, i), -1).detach()
        assert torch.allclose(torch.tensor(ax.images[0].get_array()[r].tolist()), expected), rows[r]
    columns, rows, ax = axis_labels("stack")
    assert columns == ["k3_t3", "skip"]
    assert rows == ["block 1 layer 0", "block 1 layer 1", "block 3 layer 0"]
    expected = F.softmax(supernet.stack_alphas(1)[1], -1).detach()
    assert torch.allclose(torch.tensor(ax.images[0].get_array()[1].tolist()), expected)

    # a cell method's plain matrices: edges `j->i` on the rows, the given column names on the columns
    cell = [{"epoch": 1, "arch_weights": json.dumps({"normal": [[1 / 8] * 8] * 14})}]
    plot_arch_weights(cell, tmp_path, column_names=PRIMITIVES)
    ax = figures["normal"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "max", "avg", "skip", "sep3", "sep5", "dil3",
                                                            "dil5"]
    assert [t.get_text() for t in ax.get_yticklabels()][:3] == ["0->2", "1->2", "0->3"]
    for fig in figures.values():
        plt.close(fig)


def test_rescale_keeps_the_mass_of_unsampled_ops():
    before = torch.tensor([0.5, -1.0, 2.0, 0.0])
    after = before.clone()
    after[[0, 2]] += torch.tensor([0.7, -0.3])  # an optimiser step moved the two sampled alphas
    rescale_sampled(after, before, [0, 2])
    p_before, p_after = F.softmax(before, 0), F.softmax(after, 0)
    assert torch.allclose(p_after[[1, 3]], p_before[[1, 3]], atol=1e-6)
    assert p_after[0] / p_after[2] == pytest.approx(float(torch.exp(after[0] - after[2])))
    assert sorted(sample_ops(before, 2, uniform=False)) != [] and len(set(sample_ops(before, 4, True))) == 4


def test_supernet_forward_runs_every_path(tiny, supernet):
    x = torch.randn(2, 3, 32, 32)
    for name, (op, alphas) in supernet.mixed_ops().items():
        op.active = [0]
    logits = supernet(x)
    logits.sum().backward()
    # every routing path is evaluated: every beta with a choice gets a gradient from the loss
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in supernet.betas.values() if p.numel() > 1)


def test_killed_and_resumed_budget_search_matches_uninterrupted(tiny, tmp_path):
    from killresume import kill_and_resume

    from hwnas.latency.table import save_table

    table, _ = synthetic_table(tiny)
    save_table(table, tmp_path / "tiny.csv")
    low, high = RoutingCost(tiny, table).bounds()
    overrides = [f"method.space={tmp_path / 'tiny.yaml'}", f"method.table={tmp_path / 'tiny.csv'}",
                 "method.latency_loss=budget", f"method.budget_ms={(low + high) / 2}", "method.budget_anneal_epochs=2",
                 "search.arch_start_epoch=1", "search.steps_per_epoch=2", "search.batch_size=8", "data.channels=3"]
    full, again = kill_and_resume("densenas", tmp_path, overrides, epochs=3)
    assert full["method"]["mu"] == again["method"]["mu"] != 0.0
    assert full["method"]["start_ms"] == again["method"]["start_ms"] is not None  # the annealed target's start
    for name, value in full["model"].items():
        assert torch.equal(value, again["model"][name]), name


def tiny_method(tiny, tmp_path, *extra):
    from hwnas.config import load_config
    from hwnas.methods import SearchConfig
    from hwnas.latency.table import save_table
    from hwnas.methods.densenas import DenseNas

    table, _ = synthetic_table(tiny)
    save_table(table, tmp_path / "tiny.csv")
    config = load_config(SearchConfig, "configs/search/densenas_digits.yaml",
                         [f"method.space={tmp_path / 'tiny.yaml'}", f"method.table={tmp_path / 'tiny.csv'}", *extra])
    return DenseNas(config, 10, 3)


@pytest.mark.parametrize("sharing", ["independent", "nested"])
def test_evaluation_runs_every_op_weighted_not_the_last_sample(tiny, tmp_path, sharing):
    """The loop evaluates the supernet after `before_evaluation`: every op of every layer, weighted by
    softmax(alpha), whatever the last training step sampled."""
    method = tiny_method(tiny, tmp_path, f"method.weight_sharing={sharing}")
    model = method.build_supernet().eval()
    with torch.no_grad():
        for p in model.arch_parameters():
            p.copy_(torch.randn_like(p))
    method.on_epoch_start(model, 1, 2)
    x = torch.randn(4, 3, 32, 32)
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        method.sample(model, "weights")  # what a weight step leaves behind
        method.before_evaluation(model)
        for op, alphas in model.mixed_ops().values():
            assert op.active == list(range(len(op.names)))
            torch.testing.assert_close(op.weights, F.softmax(alphas.detach(), -1))
        outputs.append(model(x))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_budget_ms_alone_turns_the_budget_on(tiny, tmp_path):
    from hwnas.errors import ConfigError

    method = tiny_method(tiny, tmp_path, "method.budget_ms=100")
    assert method.options.latency_loss == "budget" and method.budget is not None
    with pytest.raises(ConfigError, match="budget_ms is set but latency_loss is 'densenas'"):
        tiny_method(tiny, tmp_path, "method.latency_loss=densenas", "method.budget_ms=100")
    assert tiny_method(tiny, tmp_path).options.latency_loss == "densenas"  # no budget: the release's loss


def test_both_loss_terms_are_logged_per_epoch(tiny, tmp_path):
    import csv

    from hwnas.cli import main

    table, _ = synthetic_table(tiny)
    from hwnas.latency.table import save_table

    save_table(table, tmp_path / "tiny.csv")
    args = ["search", "densenas", "--out", str(tmp_path / "run"), "--table", str(tmp_path / "tiny.csv"), "--quiet",
            "--set", f"method.space={tmp_path / 'tiny.yaml'}", "--set", "search.epochs=2", "--set",
            "search.arch_start_epoch=1", "--set", "search.steps_per_epoch=2", "--set", "search.batch_size=8"]
    assert main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert rows[0]["arch_ce"] == "" or math.isnan(float(rows[0]["arch_ce"]))  # no architecture steps in epoch 1
    ce, term, latency = (float(rows[1][k]) for k in ("arch_ce", "arch_latency_term", "expected_latency_ms"))
    assert ce > 0 and latency > 0
    # the densenas loss term at the epoch's expected latencies: lambda * log(LAT) / log(tau), LAT near the last
    options = tiny_method(tiny, tmp_path).options
    assert term == pytest.approx(options.lambda_ * math.log(latency) / math.log(options.tau_ms), rel=0.2)


def test_the_annealed_target_falls_from_the_first_expected_latency_to_the_budget():
    from hwnas.latency.cost import BudgetMultiplier

    budget = BudgetMultiplier(budget_ms=1.0, dual_lr=0.1, anneal_epochs=4)
    budget.begin_arch_epoch(0)
    budget.penalty(torch.tensor(3.0))  # the first architecture step fixes the start
    targets = []
    for epoch in range(6):
        budget.begin_arch_epoch(epoch)
        targets.append(budget.target_ms)
    assert targets == pytest.approx([2.5, 2.0, 1.5, 1.0, 1.0, 1.0])
    budget.begin_arch_epoch(0)
    budget.update(2.5)  # on target: the multiplier stays where it is
    assert budget.mu == 0.0
    budget.update(3.0)
    assert budget.mu == pytest.approx(0.1 * (3.0 / 2.5 - 1))
    # a supernet already within its budget aims at the budget itself
    fast = BudgetMultiplier(budget_ms=1.0, dual_lr=0.1, anneal_epochs=4)
    fast.penalty(torch.tensor(0.5))
    assert fast.target_ms == 1.0
    # without annealing: the budget from the first step
    plain = BudgetMultiplier(budget_ms=1.0, dual_lr=0.1)
    plain.penalty(torch.tensor(3.0))
    assert plain.target_ms == 1.0


def test_the_anneal_must_end_before_the_search(tiny, tmp_path):
    from hwnas.errors import ConfigError

    # a recipe may say how to anneal a budget given later (`--budget-ms`), as it says dual_lr
    assert tiny_method(tiny, tmp_path, "method.budget_anneal_epochs=2").budget is None
    # the digits recipe has 13 epochs, architecture steps from epoch 5 (index 4): 9 architecture epochs
    assert tiny_method(tiny, tmp_path, "method.budget_ms=100", "method.budget_anneal_epochs=9").budget.anneal_epochs == 9
    with pytest.raises(ConfigError, match="only 9 architecture epoch"):
        tiny_method(tiny, tmp_path, "method.budget_ms=100", "method.budget_anneal_epochs=10")


@pytest.mark.parametrize("sampling, spread", [("architecture", False), ("uniform", True)])
def test_weight_steps_sample_from_the_alphas_or_uniformly(tiny, tmp_path, sampling, spread):
    method = tiny_method(tiny, tmp_path, "method.weight_sharing=nested", f"method.weight_sampling={sampling}")
    model = method.build_supernet()
    with torch.no_grad():
        for _, alphas in model.mixed_ops().values():
            alphas.zero_()
            alphas[0] = 50.0  # the architecture weights all but certain of op 0
    method.on_epoch_start(model, method.config.search.arch_start_epoch, method.config.search.epochs)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        method.sample(model, "weights")
        seen.update(op for sampled in method._sampled.values() for op in sampled)
    assert (len(seen) > 1) == spread


# ---- the final choice by the supernet's shared weights (method.derive_candidates) ----

def test_forward_path_is_the_supernet_forward_with_only_that_path_weighted(tiny, supernet):
    """With every block's connections weighted one on the path and zero off it, and each layer running the
    path's op, the supernet's forward is the network: forward_path must give the same logits."""
    supernet.eval()
    x = torch.randn(2, 3, 32, 32)
    checked = 0
    for path, heads, stacks, arch in all_archs(tiny):
        # forward_path runs kept stack ops in a block's first layers: compare where skips come last
        if any(list(s) != sorted(s, key=lambda o: tiny.stack_ops[o] == "skip_connect") for s in stacks):
            continue
        successor = dict(zip(path, path[1:]))
        probs = {b: torch.tensor([float(successor.get(b) == t) for t in tiny.targets(b)]) for b in range(tiny.num_blocks)}
        supernet.edge_probs = lambda b: probs[b]
        for a, k, h, s in zip(path, path[1:], heads, stacks):
            supernet.heads[f"{k}_{a}"].active = [h]
            for layer, o in zip(supernet.stacks[str(k)] if str(k) in supernet.stacks else (), s):
                layer.active = [o]
        with torch.no_grad():
            assert torch.allclose(supernet(x), supernet.forward_path(x, arch), atol=1e-5), arch
        checked += 1
    assert checked > 20


def test_shared_weight_accuracy_measures_batch_norm_on_calibration_and_restores_it():
    """A batch norm whose running mean is 0 and a classifier "normalised input > 0": on inputs 9 and 11 it
    says class 1 twice (half right). Calibrated on inputs around 10 it tells them apart (all right), and
    the model's own statistics are as they were afterwards."""
    norm = nn.BatchNorm1d(1, affine=False)
    model = nn.Sequential(norm)
    forward = lambda x: torch.cat([torch.zeros_like(x), model(x)], dim=1)  # logit of class 1: the normalised x
    model.eval()
    evaluation = [(torch.tensor([[9.0], [11.0]]), torch.tensor([0, 1]))]
    before = (norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.clone(), norm.momentum)
    assert (forward(evaluation[0][0]).argmax(1) == evaluation[0][1]).float().mean() == 0.5
    calibration = [(torch.tensor([[8.0], [10.0], [12.0]]), None), (torch.tensor([[9.5], [10.5]]), None)]
    assert shared_weight_accuracy(model, forward, calibration, evaluation) == 1.0
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
    assert int(norm.num_batches_tracked) == int(before[2]) and norm.momentum == before[3] and not model.training


def test_draw_follows_the_search_distribution(tiny, supernet):
    weights = weights_of(tiny, supernet)
    # certain weights: every draw is the Viterbi architecture
    certain = RoutingWeights(
        edges={b: [float(i == 0) for i in range(len(p))] for b, p in weights.edges.items()},
        heads={k: [float(i == 1) for i in range(len(p))] for k, p in weights.heads.items()},
        stacks={b: [[float(i == 0) for i in range(len(p))] for p in ps] for b, ps in weights.stacks.items()})
    rng = random.Random(0)
    assert {draw(tiny, certain, rng) for _ in range(20)} == {viterbi(tiny, certain)}
    # spread weights: each architecture as often as its probability (summed over the stack choices that
    # give it: a skip layer is dropped wherever it stands)
    probability = Counter()
    for path, heads, stacks, arch in all_archs(tiny):
        p = 1.0
        for a, k in zip(path, path[1:]):
            p *= weights.edges[a][tiny.targets(a).index(k)]
        for a, k, h, s in zip(path, path[1:], heads, stacks):
            p *= weights.heads[k, a][h]
            for layer, o in enumerate(s):
                p *= weights.stacks[k][layer][o]
        probability[arch] += p
    n = 4000
    drawn = Counter(draw(tiny, weights, rng) for _ in range(n))
    for arch, p in probability.most_common(5):
        assert abs(drawn[arch] / n - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-3, arch
    assert all(arch.check(tiny) for arch in drawn)


class FixedImages:
    """Held-out images for a test: random, a few batches."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
                        for _ in range(3)]

    def calibration(self):
        return self.batches[:2]

    def evaluation(self):
        return self.batches[2:]


def test_derive_final_keeps_the_most_accurate_of_the_most_probable_and_candidates_in_the_window(tiny, tmp_path):
    table, _ = synthetic_table(tiny)
    low, high = RoutingCost(tiny, table).bounds()
    budget = low + 0.6 * (high - low)
    method = tiny_method(tiny, tmp_path, f"method.budget_ms={budget}", "method.budget_slack=0.3",
                         "method.derive_candidates=6", "method.weight_sharing=nested")
    torch.manual_seed(1)
    model = method.build_supernet()
    with torch.no_grad():
        for p in model.arch_parameters():
            p.copy_(torch.randn_like(p))
    images = FixedImages()
    arch = method.derive_final(model, images)
    rows = method.report()["candidates"]
    cost = method.latency.cost
    most_probable = method.derive(model)  # named by the space's file, as a user's own space is
    assert most_probable.blocks == budget_viterbi(tiny, method.weights(model), cost, budget, 0.7 * budget).blocks
    assert RoutedArch.from_dict(rows[0]["arch"]) == most_probable and rows[0]["most_probable"]
    assert len(rows) == 7 and len({r["arch_text"] for r in rows}) == 7
    assert all(0.7 * budget - 1e-9 <= r["predicted_ms"] <= budget + 1e-9 for r in rows[1:])
    kept = [r for r in rows if r["kept"]]
    assert len(kept) == 1 and RoutedArch.from_dict(kept[0]["arch"]) == arch and kept[0]["arch_text"] == str(arch)
    assert kept[0]["shared_weight_acc"] == max(r["shared_weight_acc"] for r in rows)
    again = shared_weight_accuracy(model, lambda x: model.forward_path(x, arch), images.calibration(), images.evaluation())
    assert again == kept[0]["shared_weight_acc"]
    # without candidates the final derivation is the most probable architecture
    plain = tiny_method(tiny, tmp_path, f"method.budget_ms={budget}", "method.budget_slack=0.3",
                        "method.weight_sharing=nested")
    assert plain.derive_final(model, images) == most_probable and "candidates" not in plain.report()


def test_derive_candidates_needs_a_budget(tiny, tmp_path):
    with pytest.raises(ConfigError, match="derive_candidates .* needs budget_ms"):
        tiny_method(tiny, tmp_path, "method.derive_candidates=4", "method.latency_loss=densenas")


def test_a_search_with_candidates_reports_them_and_hands_on_the_kept_one(tiny, tmp_path):
    from hwnas.cli import main
    from hwnas.latency.table import save_table

    table, _ = synthetic_table(tiny)
    save_table(table, tmp_path / "tiny.csv")
    low, high = RoutingCost(tiny, table).bounds()
    args = ["search", "densenas", "--out", str(tmp_path / "run"), "--table", str(tmp_path / "tiny.csv"),
            "--budget-ms", str(low + 0.5 * (high - low)), "--json", "--quiet",
            "--set", f"method.space={tmp_path / 'tiny.yaml'}", "--set", "method.derive_candidates=3",
            "--set", "method.budget_slack=0.3", "--set", "search.epochs=2", "--set", "search.arch_start_epoch=1",
            "--set", "search.steps_per_epoch=2", "--set", "search.batch_size=8"]
    assert main(args) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    kept = [r for r in report["candidates"] if r["kept"]]
    assert len(kept) == 1 and kept[0]["arch"] == report["arch"]
    RoutedArch.from_dict(report["arch"]).check(tiny)
    assert 2 <= len(report["candidates"]) <= 4
