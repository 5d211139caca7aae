"""DenseNAS's final derivation by the supernet's shared weights: one network through the supernet, its
accuracy with re-measured batch norms, candidates drawn from the search's distribution."""

import json
import random
from collections import Counter

import pytest
import torch
from torch import nn

from hwnas.derive import RoutingWeights, budget_viterbi, draw, viterbi
from hwnas.errors import ConfigError
from hwnas.latency.cost import RoutingCost
from hwnas.archs.routed import RoutedArch
from hwnas.supernets.ranking import shared_weight_accuracy
from hwnas.supernets.routing import RoutingSupernet

from latency_helpers import load_tiny_space, synthetic_table
from test_densenas import all_archs, tiny_method, weights_of


@pytest.fixture
def tiny(tmp_path):
    return load_tiny_space(tmp_path)


@pytest.fixture
def supernet(tiny):
    torch.manual_seed(0)
    model = RoutingSupernet(tiny, 10, nested=True)
    with torch.no_grad():
        for p in model.arch_parameters():
            p.copy_(torch.randn_like(p))
    return model.eval()


def test_forward_path_is_the_supernet_forward_with_only_that_path_weighted(tiny, supernet):
    """With every block's connections weighted one on the path and zero off it, and each layer running the
    path's op, the supernet's forward is the network: forward_path must give the same logits."""
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
