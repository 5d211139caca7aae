"""GDAS and GDAS-FRC: hard Gumbel sampling, one op per edge, temperature, fixed reduction, search and resume."""

import csv

import pytest
import torch
from killresume import kill_and_resume
import torch.nn.functional as F

from hwnas.errors import ConfigError
from hwnas.archs.genotype import ZOO
from hwnas.kinds import load_arch
from hwnas.methods import gdas
from hwnas.methods.gdas import (Gdas, GdasFrc, GdasMixedOp, GdasSupernet, hard_gumbel_softmax,
                                temperature)
from hwnas.models import count_parameters
from hwnas.models.cell_net import FixedReductionCell, NetworkCIFAR
from hwnas.ops.cell import PRIMITIVES
from hwnas.search import search

from tiny import TINY, tiny_config


def noise_picking(index: int, size: int = len(PRIMITIVES)):
    """A stand-in for `gumbel_noise` whose sample is `index` (a +5 bump beats tiny alphas at tau 10)."""
    def noise(like: torch.Tensor) -> torch.Tensor:
        g = torch.zeros_like(like)
        g[..., index] = 5.0
        return g
    return noise


# --- sampling ------------------------------------------------------------------------------------
def test_hard_sample_is_exactly_one_hot_and_follows_softmax_alpha():
    # Gumbel-max: argmax(log_softmax(alpha) + g) ~ Categorical(softmax(alpha)), whatever tau
    probs = torch.tensor([0.7, 0.2, 0.1])
    alpha = probs.log().repeat(20000, 1)  # each row is one independent sample
    h = hard_gumbel_softmax(alpha, tau=10.0)
    assert set(h.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(h.sum(dim=1), torch.ones(20000))
    assert torch.allclose(h.mean(dim=0), probs, atol=0.015)  # ~5 standard deviations


def test_inf_or_nan_noise_is_redrawn(monkeypatch):
    alpha = torch.zeros(2, 4, requires_grad=True)
    good = torch.tensor([[0.0, 0.0, 3.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    bad_inf, bad_nan = good.clone(), good.clone()
    bad_inf[0, 1] = float("inf")  # what Exponential(1) = 0 gives
    bad_nan[1, 3] = float("nan")
    draws = [bad_inf, bad_nan, good]
    monkeypatch.setattr(gdas, "gumbel_noise", lambda like: draws.pop(0))
    h = hard_gumbel_softmax(alpha, tau=1.0)
    assert draws == []  # two redraws, then the good sample
    assert torch.equal(h, torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    h.sum().backward()
    assert torch.isfinite(alpha.grad).all()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("index", range(len(PRIMITIVES)))
def test_mixed_op_runs_only_the_sampled_op_times_its_hard_weight(monkeypatch, stride, index):
    name, tau = PRIMITIVES[index], 10.0
    op = GdasMixedOp(4, stride, PRIMITIVES)
    calls = {k: 0 for k in op.ops}
    for k, module in op.ops.items():
        module.register_forward_hook(lambda m, i, o, k=k: calls.__setitem__(k, calls[k] + 1))
    alpha = (1e-3 * torch.randn(1, len(PRIMITIVES))).requires_grad_()
    monkeypatch.setattr(gdas, "gumbel_noise", noise_picking(index))
    h = hard_gumbel_softmax(alpha, tau)[0]
    assert h[index].item() == 1.0 and h.sum().item() == 1.0

    x = torch.randn(2, 4, 8, 8)
    out = op(x, h)
    assert calls == {k: int(k == name) for k in op.ops}  # one op computed, or none at all
    with torch.no_grad():
        if name == "none":
            expected = torch.zeros(2, 4, 8 // stride, 8 // stride)
        else:
            expected = op.ops[name](F.relu(x) if name in op.takes_relu else x)
    assert torch.equal(out, expected)  # op_i(x) * 1.0

    # L = sum(r * out) = S * h_i with S = sum(r * op_i(x)), so dL/dalpha_k = S * p_i * (delta_ik - p_k) / tau,
    # p = softmax((alpha + g) / tau). (r: a plain sum would vanish, BN outputs sum to zero over the batch.)
    r = torch.randn_like(out)
    (r * out).sum().backward()
    p = F.softmax((alpha.detach()[0] + noise_picking(index)(alpha.detach()[0])) / tau, dim=-1)
    want = (r * expected).sum() * p[index] * (F.one_hot(torch.tensor(index), len(PRIMITIVES)) - p) / tau
    assert torch.allclose(alpha.grad[0], want, rtol=1e-4, atol=1e-6)
    if name != "none":  # a zero output has zero gradient, as in the release
        assert (alpha.grad != 0).all()


def test_supernet_draws_one_sample_per_cell_type_and_runs_one_op_per_edge(monkeypatch):
    samples = []

    def recording(alpha, tau):
        h = hard_gumbel_softmax(alpha, tau)
        samples.append(h)
        return h

    monkeypatch.setattr(gdas, "hard_gumbel_softmax", recording)
    model = GdasSupernet(4, 10, 5, 2, 3, 1)  # cells: normal, reduce, normal, reduce, normal
    ran = []  # (cell, edge, op name)
    for c, cell in enumerate(model.cells):
        for e, edge in enumerate(cell.edges):
            for k, module in edge.ops.items():
                module.register_forward_hook(lambda m, i, o, key=(c, e, k): ran.append(key))
    model(torch.randn(2, 1, 8, 8))
    assert len(samples) == 2  # normal, then reduce
    hard = dict(zip(("normal", "reduce"), samples))
    expected = [
        (c, e, PRIMITIVES[int(hard["reduce" if cell.reduction else "normal"][e].argmax())])
        for c, cell in enumerate(model.cells) for e in range(len(cell.edges))
    ]
    assert ran == [key for key in expected if key[2] != "none"]


def test_gdas_supernet_is_the_darts_search_network():
    model = GdasSupernet()  # C16, 8 cells: same weights as DARTS, only sampled differently
    assert count_parameters(model) == 1_930_618  # docs/methods.md: DARTS cell space, exact
    assert sum(p.numel() for p in model.arch_parameters()) == 2 * 14 * 8


# --- temperature and options ----------------------------------------------------------------------
def test_temperature_falls_linearly_from_10_to_0_1():
    taus = [temperature(e, 250, 10.0, 0.1) for e in range(250)]
    assert taus[0] == 10.0 and taus[-1] == 0.1
    steps = [a - b for a, b in zip(taus, taus[1:])]
    assert steps == pytest.approx([9.9 / 249] * 249)
    assert [temperature(e, 3, 10.0, 0.1) for e in range(3)] == pytest.approx([10.0, 5.05, 0.1])
    assert temperature(0, 1, 10.0, 0.1) == 10.0


def test_on_epoch_start_sets_and_logs_tau():
    method = Gdas(tiny_config("gdas", "method.tau_max=5.0", "method.tau_min=1.0"), 10, 1)
    model = method.build_supernet()
    assert model.tau == 5.0
    assert method.on_epoch_start(model, 2, 5) == {"tau": 3.0} and model.tau == 3.0


@pytest.mark.parametrize("setting, message", [
    ("method.tau_min=20.0", "method.tau_min: must be below tau_max (10.0)"),
    ("method.tau_max=0.0", "method.tau_max: Input should be greater than 0"),
    ("method.unrolled=true", "method.unrolled: unknown key"),
])
def test_bad_options_name_the_key(setting, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config("gdas", setting)


# --- derivation and the fixed reduction cell -------------------------------------------------------
def alphas_choosing(pairs, nodes: int = 4) -> torch.Tensor:
    """Alphas from which the DARTS rule derives `pairs`: first pair of a node strongest, then the second."""
    alpha = torch.zeros(sum(2 + n for n in range(nodes)), len(PRIMITIVES))
    for k, (op, src) in enumerate(pairs):
        node = k // 2
        alpha[sum(2 + n for n in range(node)) + src, PRIMITIVES.index(op)] = 2.0 - k % 2
    return alpha


def test_gdas_derives_with_the_darts_rule():
    method = Gdas(tiny_config("gdas", "method.supernet.nodes=4"), 10, 1)
    model = method.build_supernet()
    with torch.no_grad():
        model.alphas["normal"].copy_(alphas_choosing(ZOO["GDAS_V1"].normal))
        model.alphas["reduce"].copy_(alphas_choosing(ZOO["GDAS_V1"].reduce))
    genotype = method.derive(model)
    assert genotype == ZOO["GDAS_V1"]
    assert count_parameters(NetworkCIFAR(genotype)) == 3_368_782  # docs/methods.md: Published cells


def test_frc_supernet_searches_only_the_normal_cell():
    method = GdasFrc(tiny_config("gdas-frc", "method.supernet.nodes=4"), 10, 1)
    model = method.build_supernet()
    assert [name for name, _ in model.named_parameters() if name.startswith("alphas")] == ["alphas.normal"]
    assert model.arch_parameters() == [model.alphas["normal"]]
    assert [isinstance(cell, FixedReductionCell) for cell in model.cells] == [False, True, True]
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert model.alphas["normal"].grad is not None

    with torch.no_grad():
        model.alphas["normal"].copy_(alphas_choosing(ZOO["GDAS_F1"].normal))
    genotype = method.derive(model)
    assert genotype.reduce is None and genotype.reduce_concat is None and genotype.fixed_reduction
    assert genotype == ZOO["GDAS_F1"]
    net = NetworkCIFAR(genotype)
    assert isinstance(net.cells[6], FixedReductionCell) and isinstance(net.cells[13], FixedReductionCell)
    assert count_parameters(net) == 2_543_014  # docs/methods.md: Published cells


def test_frc_needs_init_channels_divisible_by_4():
    with pytest.raises(ConfigError, match="multiple of 4"):
        GdasFrc(tiny_config("gdas-frc", "method.supernet.init_channels=6"), 10, 1).build_supernet()


# --- searches -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gdas", "gdas-frc"])
def test_tiny_search_writes_a_valid_genotype(tmp_path, method):
    report = search(tiny_config(method), tmp_path / "run", quiet=True)
    genotype = load_arch(tmp_path / "run/arch.json", "cell")
    assert report["epochs"] == 3 and report["arch"] == genotype.to_dict()
    assert len(genotype.normal) == 4  # 2 nodes x 2 inputs
    assert genotype.fixed_reduction == (method == "gdas-frc")
    rows = list(csv.DictReader((tmp_path / "run/metrics.csv").read_text().splitlines()))
    assert [float(r["tau"]) for r in rows] == pytest.approx([10.0, 5.05, 0.1])
    state = torch.load(tmp_path / "run/checkpoints/search.pt", weights_only=True)["model"]
    assert ("alphas.reduce" in state) == (method == "gdas")
    net = NetworkCIFAR(genotype, C=8, num_classes=10, layers=5, auxiliary=False, in_channels=1)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)  # it builds and runs


def test_killed_and_resumed_gdas_search_matches_uninterrupted(tmp_path):
    # Gumbel samples come from the global torch RNG, which the checkpoint restores
    epochs = 4
    full, again = kill_and_resume("gdas", tmp_path, TINY, epochs)
    for kind in ("normal", "reduce"):
        assert torch.equal(full["model"][f"alphas.{kind}"], again["model"][f"alphas.{kind}"])
    rows = list(csv.DictReader((tmp_path / "killed/metrics.csv").read_text().splitlines()))
    assert [float(r["tau"]) for r in rows] == pytest.approx([temperature(e, epochs, 10.0, 0.1) for e in range(epochs)])
