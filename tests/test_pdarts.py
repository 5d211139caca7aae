"""P-DARTS: stage supernet sizes, pruning, skip dropout schedule, skip limit, a quick search."""

import json
import math

import pytest
import torch
from killresume import kill_and_resume

from hwnas.config import load_config
from hwnas.methods import SearchConfig
from hwnas.errors import ConfigError
from hwnas.info import supernet_info
from hwnas.methods.pdarts import SkipDropoutMixedOp, limit_skips, prune_edges, stage_dropout
from hwnas.ops.cell import PRIMITIVES
from hwnas.search import search


@pytest.mark.parametrize("layers, params", [(5, 1_275_834), (11, 2_585_146), (17, 3_894_202)])
def test_stage_supernet_sizes(layers, params):
    assert supernet_info("pdarts", layers=layers)["params"] == params


def test_default_supernet_is_the_first_stage():
    assert supernet_info("pdarts")["params"] == 1_275_834


def test_pruning_keeps_the_strongest_in_original_order():
    w = torch.tensor([[0.30, 0.05, 0.10, 0.20, 0.15, 0.02, 0.08, 0.10]])
    assert prune_edges(w, [PRIMITIVES], 3) == [("none", "skip_connect", "sep_conv_3x3")]
    w2 = torch.tensor([[0.5, 0.2, 0.3]])
    assert prune_edges(w2, [("none", "skip_connect", "sep_conv_3x3")], 1) == [("none",)]


def test_dropout_schedule_is_linear_then_exponential():
    assert stage_dropout(0.4, 0, 25, 10, 0.2) == pytest.approx(0.4 * 24 / 25)
    assert stage_dropout(0.4, 9, 25, 10, 0.2) == pytest.approx(0.4 * 15 / 25)
    assert stage_dropout(0.4, 10, 25, 10, 0.2) == pytest.approx(0.4)
    assert stage_dropout(0.4, 15, 25, 10, 0.2) == pytest.approx(0.4 * math.exp(-1.0))


def test_skip_dropout_only_on_identity():
    op = SkipDropoutMixedOp(4, 1, ("skip_connect", "avg_pool_3x3"))
    op.skip_dropout = 0.5
    x = torch.ones(200, 4, 3, 3)
    w = torch.tensor([1.0, 0.0])
    out = op.train()(x, w)
    assert ((out == 0) | (out == 2)).all() and 0.3 < (out == 0).float().mean() < 0.7
    assert torch.equal(op.eval()(x, w), x)
    reduce_op = SkipDropoutMixedOp(4, 2, ("skip_connect", "avg_pool_3x3"))
    assert not reduce_op.has_identity_skip  # stride 2: factorized reduce, no dropout


def _cell_weights(skip_edges, skip_weight=0.6):
    """2-node cell (5 edges), candidates (none, skip, sep3); `skip_edges` prefer skip."""
    prims = [("none", "skip_connect", "sep_conv_3x3")] * 5
    w = torch.tensor([[0.1, 0.3, 0.6]] * 5)
    for edge, weight in skip_edges.items():
        w[edge] = torch.tensor([0.0, weight, 1 - weight])
    return w, prims


def test_skip_limit_removes_weakest_chosen_skips_first():
    w, prims = _cell_weights({0: 0.9, 1: 0.8, 2: 0.95, 3: 0.7})
    chosen, by_skips = limit_skips(w, prims, nodes=2, limit=2)
    assert [op for op, _ in chosen].count("skip_connect") == 2
    # the weakest chosen skip (edge 1->3, 0.7) goes first: that edge falls behind 2->3 (sep3 0.6);
    # then edge 1->2 (0.8) switches to sep_conv_3x3
    assert chosen == (("skip_connect", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 2))
    assert sorted(by_skips) == [0, 1, 2, 3, 4]
    unlimited, _ = limit_skips(w, prims, nodes=2, limit=8)
    assert [op for op, _ in unlimited].count("skip_connect") == 4


@pytest.mark.parametrize("bad", ["method.keep_ops=[5,3,2]", "method.keep_ops=[5,6,1]", "method.add_layers=[0,6]"])
def test_stage_options_validated(bad):
    with pytest.raises(ConfigError):
        load_config(SearchConfig, "configs/search/pdarts_digits.yaml", [bad])


TINY = ["data.image_size=8", "data.train_subset=192", "method.supernet.init_channels=4", "method.supernet.nodes=2",
        "search.batch_size=16", "search.steps_per_epoch=2", "search.arch_start_epoch=1"]


def test_quick_search_three_stages(tmp_path):
    config = load_config(SearchConfig, "configs/search/pdarts_digits.yaml", TINY + ["search.epochs=2"])
    report = search(config, tmp_path / "r", quiet=True)
    rows = (tmp_path / "r/metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 2 and rows[-1].startswith("stage3,2")
    for stage in (1, 2, 3):
        assert (tmp_path / f"r/checkpoints/stage{stage}.pt").is_file()
    third = torch.load(tmp_path / "r/checkpoints/stage3.pt", weights_only=True)["model"]
    assert third["alphas.normal"].shape == (5, 3)  # 3 candidates per edge in the last stage
    normal = report["arch"]["normal"]
    assert sum(op == "skip_connect" for op, _ in normal) <= 2
    assert "none" not in {op for op, _ in normal}
    assert report["normal_cells_by_skip_count"]
    assert json.loads((tmp_path / "r/report.json").read_text())["arch"] == report["arch"]


def test_killed_in_stage_one_and_resumed_matches_uninterrupted(tmp_path):
    # killed after the first epoch of stage 1; resuming must rebuild stages 2 and 3 identically
    full, again = kill_and_resume("pdarts", tmp_path, TINY, epochs=2, checkpoint="stage1.pt", final="stage3.pt")
    for kind in ("normal", "reduce"):
        assert torch.equal(full["model"][f"alphas.{kind}"], again["model"][f"alphas.{kind}"])
