"""The DARTS derivation rule on hand-made weights."""

import torch

from hwnas.derive import derive_cell
from hwnas.ops.cell import PRIMITIVES

NONE, MAX, AVG, SKIP, SEP3, SEP5, DIL3, DIL5 = range(8)


def _row(**weights):
    row = torch.full((8,), 0.01)
    for index, value in weights.items():
        row[int(index[1:])] = value
    return row


def test_darts_rule_two_nodes():
    # node 2 has edges from 0 and 1; node 3 from 0, 1, 2 (5 edges in all)
    w = torch.stack([
        _row(o0=0.9, o4=0.05),   # 0->2: `none` dominates; strongest real op sep3 at 0.05
        _row(o5=0.3),            # 1->2: sep5 0.3
        _row(o3=0.2, o6=0.25),   # 0->3: dil3 0.25
        _row(o1=0.6),            # 1->3: max pool 0.6 (strongest)
        _row(o0=0.95, o7=0.02),  # 2->3: none-dominated, real ops weak
    ])
    pairs = derive_cell(w, [PRIMITIVES] * 5, nodes=2)
    # node 2 keeps both of its edges, strongest first: sep5 from 1 (0.3) then sep3 from 0 (0.05)
    # node 3 keeps max pool from 1 (0.6) and dil3 from 0 (0.25); the none-heavy edge from 2 is dropped
    assert pairs == (("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("dil_conv_3x3", 0))


def test_none_never_chosen_even_if_everything_is_none():
    w = torch.stack([_row(o0=0.99) for _ in range(5)])
    pairs = derive_cell(w, [PRIMITIVES] * 5, nodes=2)
    assert all(op != "none" for op, _ in pairs)


def test_ties_keep_the_lower_input_first():
    w = torch.full((5, 8), 0.125)
    pairs = derive_cell(w, [PRIMITIVES] * 5, nodes=2)
    assert [src for _, src in pairs] == [0, 1, 0, 1]


def test_per_edge_candidate_lists():
    # pruned edges (P-DARTS) carry their own candidate lists
    prims = [("none", "skip_connect"), ("sep_conv_3x3", "max_pool_3x3")]
    w = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    assert derive_cell(w, prims, nodes=1) == (("max_pool_3x3", 1), ("skip_connect", 0))
