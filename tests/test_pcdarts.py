"""PC-DARTS against known values: supernet size, channel shuffle, reduction bypass, edge
normalisation, derivation with betas, a tiny search, kill and resume (docs/methods.md: PC-DARTS)."""

import json
import math

import pytest
import torch
from killresume import kill_and_resume
import torch.nn.functional as F

from hwnas.cli import main
from hwnas.config import load_config
from hwnas.methods import SearchConfig
from hwnas.errors import ConfigError
from hwnas.kinds import load_arch
from hwnas.methods import get_method
from hwnas.methods.pcdarts import PartialChannelMixedOp, PcDarts, channel_shuffle
from hwnas.models import count_parameters
from hwnas.ops.cell import PRIMITIVES
from hwnas.search import search
from hwnas.supernets.cell import MixedOp

from tiny import TINY, tiny_config


# --- size -------------------------------------------------------------------------------------------
def test_released_supernet_has_the_published_size(capsys):
    config = load_config(SearchConfig, "configs/search/pcdarts_cifar10.yaml")
    assert get_method("pcdarts") is PcDarts
    model = PcDarts(config, 10, 3).build_supernet()
    assert count_parameters(model) == 299_578  # exact, from the authors' model class
    assert main(["info", "--supernet", "pcdarts", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 299_578
    assert info["arch_params"] == 2 * 14 * 8 + 2 * 14  # alphas + one beta per edge, per cell type


def test_width_not_divisible_by_k_is_a_clear_error(capsys):
    with pytest.raises(ConfigError, match=r"init_channels \(6\) must be divisible by method.k \(4\)"):
        PcDarts(tiny_config("pcdarts", "method.supernet.init_channels=6"), 10, 1).build_supernet()
    assert main(["info", "--supernet", "pcdarts", "--init-channels", "6"]) == 2
    assert "divisible by method.k" in capsys.readouterr().err
    with pytest.raises(ValueError, match="divisible by k"):
        PartialChannelMixedOp(6, 1, PRIMITIVES, k=4)


# --- partial channels -------------------------------------------------------------------------------
def test_channel_shuffle_spreads_the_first_group_to_every_kth_position():
    x = torch.arange(8.0).view(1, 8, 1, 1)  # channel c holds the value c
    # view (1, 4, 2): groups [0 1] [2 3] [4 5] [6 7] -> transpose -> flatten
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    y = torch.randn(2, 12, 3, 3)
    cl = channel_shuffle(y.to(memory_format=torch.channels_last), 4)
    assert torch.equal(cl, channel_shuffle(y, 4)) and cl.is_contiguous(memory_format=torch.channels_last)


def test_mixed_op_processes_the_first_c_over_k_channels_at_every_kth_position():
    op = PartialChannelMixedOp(8, 1, ("none", "skip_connect"), k=4)
    x = torch.randn(2, 8, 5, 5)
    out = op(x, torch.tensor([0.3, 0.5]))  # none adds nothing; identity scaled by 0.5
    assert out.shape == x.shape
    assert torch.equal(out[:, 0::4], 0.5 * x[:, :2])  # processed channels 0, 1 -> positions 0, 4
    for j in range(2, 8):  # bypassed channel j -> position (j % (C/K)) * K + j // (C/K)
        assert torch.equal(out[:, (j % 2) * 4 + j // 2], x[:, j])


def test_reduction_edge_bypasses_through_maxpool_and_keeps_shapes():
    op = PartialChannelMixedOp(8, 2, PRIMITIVES, k=4).eval()
    assert count_parameters(op) == count_parameters(MixedOp(2, 2, PRIMITIVES))  # candidates are C/K wide
    x = torch.randn(2, 8, 6, 6)
    out = op(x, F.softmax(torch.randn(len(PRIMITIVES)), dim=0))
    assert out.shape == (2, 8, 3, 3)
    pooled = F.max_pool2d(x, 2, 2)
    for j in range(2, 8):
        assert torch.equal(out[:, (j % 2) * 4 + j // 2], pooled[:, j])
    # odd sizes: the stride-2 candidates give ceil(7/2) = 4, and so does the bypass
    assert op(torch.randn(2, 8, 7, 7), torch.ones(len(PRIMITIVES))).shape == (2, 8, 4, 4)


# --- edge normalisation -----------------------------------------------------------------------------
def test_edge_weights_softmax_over_each_nodes_incoming_edges():
    model = PcDarts(tiny_config("pcdarts", "method.supernet.nodes=4"), 10, 1).build_supernet()
    assert [name for name, _ in model.named_parameters() if name.startswith("betas.")] == \
        ["betas.normal", "betas.reduce"]
    assert {id(p) for p in model.arch_parameters()} >= {id(model.betas["normal"]), id(model.betas["reduce"])}
    assert not {id(p) for p in model.weight_parameters()} & {id(p) for p in model.betas.values()}
    log = math.log
    hand = [0.0, log(3.0),                          # node 0: 1/4, 3/4
            5.0, 5.0, 5.0,                          # node 1: 1/3 each
            log(1.0), log(2.0), log(3.0), log(4.0),  # node 2: 0.1 0.2 0.3 0.4
            0.0, 0.0, 0.0, 0.0, log(4.0)]           # node 3: 1/8 x4, 1/2
    with torch.no_grad():
        model.betas["normal"].copy_(torch.tensor(hand))
    weights = model.edge_weights("normal").detach()
    expected = [0.25, 0.75, 1 / 3, 1 / 3, 1 / 3, 0.1, 0.2, 0.3, 0.4, 0.125, 0.125, 0.125, 0.125, 0.5]
    assert weights.tolist() == pytest.approx(expected, abs=1e-6)
    sums = [float(weights[s:e].sum()) for s, e in ((0, 2), (2, 5), (5, 9), (9, 14))]
    assert sums == pytest.approx([1.0] * 4, abs=1e-6)
    # the betas take part in the forward pass: they get gradients
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert model.betas["normal"].grad.abs().sum() > 0 and model.betas["reduce"].grad.abs().sum() > 0


def test_derivation_ranks_edges_by_alpha_times_beta_but_keeps_each_edges_op():
    method = PcDarts(tiny_config("pcdarts"), 10, 1)  # 2 nodes: edges 0, 1 -> node 0; edges 2, 3, 4 -> node 1
    model = method.build_supernet()
    col = {name: k for k, name in enumerate(PRIMITIVES)}
    alphas = torch.zeros(5, len(PRIMITIVES))
    # one strong op per edge; its softmax weight is e^a / (e^a + 7)
    for edge, (op, logit) in enumerate([("sep_conv_3x3", 2.0), ("skip_connect", 1.0), ("max_pool_3x3", 3.0),
                                        ("dil_conv_5x5", 2.0), ("sep_conv_5x5", 1.0)]):
        alphas[edge, col[op]] = logit
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            model.alphas[kind].copy_(alphas)
            model.betas[kind].zero_()
        # normal cell: node 0 betas (0, 2) and node 1 betas (0, 0, 2) favour the weaker-alpha edges
        model.betas["normal"].copy_(torch.tensor([0.0, 2.0, 0.0, 0.0, 2.0]))
    genotype = method.derive(model)
    # uniform betas: the DARTS rule on alphas alone (0.51 > 0.28; 0.74 > 0.51 > 0.28)
    assert genotype.reduce == (("sep_conv_3x3", 0), ("skip_connect", 1),
                               ("max_pool_3x3", 0), ("dil_conv_5x5", 1))
    # node 0: 0.51 * 0.12 < 0.28 * 0.88; node 1: 0.28 * 0.79 > 0.74 * 0.11 > 0.51 * 0.11
    assert genotype.normal == (("skip_connect", 1), ("sep_conv_3x3", 0),
                               ("sep_conv_5x5", 2), ("max_pool_3x3", 0))
    weights = method.arch_weights(model)
    assert weights["normal_edges"] == pytest.approx([0.1192, 0.8808, 0.1065, 0.1065, 0.7870], abs=1e-4)
    assert weights["reduce_edges"] == pytest.approx([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3], abs=1e-6)
    assert torch.tensor(weights["normal"]).sum(dim=1).tolist() == pytest.approx([1.0] * 5, abs=1e-6)


# --- search -----------------------------------------------------------------------------------------
def test_tiny_search_writes_a_valid_genotype(tmp_path):
    report = search(tiny_config("pcdarts"), tmp_path / "run", quiet=True)
    genotype = load_arch(tmp_path / "run/arch.json", "cell")
    assert len(genotype.normal) == 4 and len(genotype.reduce) == 4  # 2 nodes x 2 inputs
    assert all(op in PRIMITIVES and op != "none" for op, _ in genotype.normal + genotype.reduce)
    assert report["arch"] == genotype.to_dict() and report["epochs"] == 3
    state = torch.load(tmp_path / "run/checkpoints/search.pt", weights_only=True)
    assert state["model"]["betas.normal"].shape == (5,) and state["done"]
    # epochs 1-2 weights only (arch_start_epoch 2): Adam took the 3 steps of epoch 3
    assert state["arch_optimizer"]["state"][0]["step"] == 3
    last = json.loads(state["history"][-1]["arch_weights"])
    assert sum(last["normal_edges"][:2]) == pytest.approx(1.0) and sum(last["normal_edges"][2:]) == pytest.approx(1.0)


def test_killed_and_resumed_search_matches_uninterrupted(tmp_path):
    full, again = kill_and_resume("pcdarts", tmp_path, TINY)
    for name in ("alphas.normal", "alphas.reduce", "betas.normal", "betas.reduce"):
        assert torch.equal(full["model"][name], again["model"][name]), name
