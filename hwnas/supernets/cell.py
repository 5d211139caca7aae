"""The DARTS cell search space: mixed ops, search cells and the search network (supernet).

The supernet owns its architecture weights (registered parameters, so checkpoints keep them).
How a mixed op weighs or samples its candidates is the method's business: a method subclasses
`CellSupernet` and overrides `op_weights` / `edge_weights`, or passes its own `MixedOp` class.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.models.cell_net import preprocess_inputs, reduction_indices
from hwnas.ops.cell import OPS, PRIMITIVES, drop_leading_relu, is_pool
from hwnas.supernets.base import Supernet

CELL_TYPES = ("normal", "reduce")


def edges_per_cell(nodes: int) -> int:
    return sum(2 + i for i in range(nodes))


class MixedOp(nn.Module):
    """One edge: `sum_k w_k * op_k(x)`. `none` adds zero, so it is not computed; its weight stays in w.

    The conv candidates all start with ReLU(x): it is computed once per edge and shared, which
    saves time and one stored activation per candidate (the result is the same).
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str]):
        super().__init__()
        self.primitives = tuple(primitives)
        self.ops = nn.ModuleDict()
        self.takes_relu: set[str] = set()
        for name in self.primitives:
            if name == "none":
                continue
            op = OPS[name](C, stride, False)
            if is_pool(name):
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            elif drop_leading_relu(op):
                self.takes_relu.add(name)
            self.ops[name] = op
        if not self.ops:
            raise ValueError("a mixed op needs at least one candidate besides `none`")

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        relu_x = F.relu(x) if self.takes_relu else None
        total = 0
        for k, name in enumerate(self.primitives):
            if name != "none":
                total = total + weights[k] * self.ops[name](relu_x if name in self.takes_relu else x)
        return total


class SearchCell(nn.Module):
    """A cell with a mixed op on each of its edges; node i sums its 2+i incoming edges."""

    def __init__(self, nodes: int, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool,
                 edge_primitives: Sequence[Sequence[str]], mixed_op: type[nn.Module]):
        super().__init__()
        self.nodes, self.reduction = nodes, reduction
        self.multiplier = nodes  # output channels = multiplier * C
        self.preprocess0, self.preprocess1 = preprocess_inputs(C_pp, C_p, C, reduction_prev, affine=False)
        self.edges = nn.ModuleList()
        for i in range(nodes):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(mixed_op(C, stride, edge_primitives[len(self.edges)]))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, op_weights: torch.Tensor,
                edge_weights: torch.Tensor | None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        edge = 0
        for i in range(self.nodes):
            total = 0
            for j in range(2 + i):
                h = self.edges[edge](states[j], op_weights[edge])
                total = total + (h if edge_weights is None else edge_weights[edge] * h)
                edge += 1
            states.append(total)
        return torch.cat(states[2:], dim=1)


class CellSupernet(Supernet):
    """The DARTS search network: stem, `layers` search cells, global pooling, classifier.

    All normal cells share one alpha matrix (edges x candidates), all reduction cells another.
    `edge_primitives[kind][e]` lists the candidates of edge e (P-DARTS prunes them per edge).
    """

    mixed_op: type[nn.Module] = MixedOp
    # cell types with architecture weights; cells of any other type are fixed (GDAS-FRC's reduction)
    searched_cells: tuple[str, ...] = CELL_TYPES

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, nodes: int = 4,
                 stem_multiplier: int = 3, in_channels: int = 3,
                 edge_primitives: dict[str, Sequence[Sequence[str]]] | None = None):
        super().__init__()
        n_edges = edges_per_cell(nodes)
        if edge_primitives is None:
            edge_primitives = {kind: [PRIMITIVES] * n_edges for kind in CELL_TYPES}
        self.edge_primitives = {kind: [tuple(p) for p in edge_primitives[kind]] for kind in CELL_TYPES}
        for kind in CELL_TYPES:
            widths = {len(p) for p in self.edge_primitives[kind]}
            if len(self.edge_primitives[kind]) != n_edges or len(widths) != 1:
                raise ValueError(f"{kind}: need {n_edges} edges with the same number of candidates")
        self.nodes = nodes
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        C_pp, C_p, C_curr, reduction_prev = C_stem, C_stem, C, False
        self.cells = nn.ModuleList()
        reductions = reduction_indices(layers)
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            kind = "reduce" if reduction else "normal"
            cell = self.make_cell(nodes, C_pp, C_p, C_curr, reduction, reduction_prev, self.edge_primitives[kind])
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        self.alphas = nn.ParameterDict({
            kind: nn.Parameter(1e-3 * torch.randn(n_edges, len(self.edge_primitives[kind][0])))
            for kind in self.searched_cells
        })

    def make_cell(self, nodes, C_pp, C_p, C, reduction, reduction_prev, edge_primitives) -> nn.Module:
        return SearchCell(nodes, C_pp, C_p, C, reduction, reduction_prev, edge_primitives, self.mixed_op)

    # --- what a method may override -------------------------------------------------------------
    def op_weights(self, kind: str) -> torch.Tensor:
        """Per-edge candidate weights (edges x candidates); DARTS: softmax over the alphas."""
        return F.softmax(self.alphas[kind], dim=-1)

    def edge_weights(self, kind: str) -> torch.Tensor | None:
        """Per-edge scalar weights, or None (DARTS has none; PC-DARTS normalises edges with betas)."""
        return None

    # ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {kind: (self.op_weights(kind), self.edge_weights(kind)) for kind in self.searched_cells}
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            # a cell of a type that is not searched (fixed) gets no weights
            op_w, edge_w = weights.get("reduce" if cell.reduction else "normal", (None, None))
            s0, s1 = s1, cell(s0, s1, op_w, edge_w)
        return self.classifier(torch.flatten(self.global_pooling(s1), 1))
