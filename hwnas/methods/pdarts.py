"""P-DARTS (Chen et al., 2019): progressive DARTS, deeper supernets with fewer candidates per stage.

docs/methods.md: P-DARTS. Three stages (5 -> 11 -> 17 cells by default), each a fresh supernet with
fresh optimisers, searched with the DARTS loop (first `search.arch_start_epoch` epochs weights only).
After a stage every edge keeps only its strongest candidates (8 -> 5 -> 3); after the last stage one
op per edge, never `none`. Two regularisers against the skip-connect collapse:

- dropout on skip_connect (stride-1 identity only), `rate` per stage, decaying within the stage:
  linearly over the weights-only epochs, then `rate * exp(-(e - warmup) * decay)`;
- at most `skip_limit` skip-connects in the final normal cell: while there are more, the weakest
  chosen skip-connect is removed from its edge and the cell derived again (every genotype on the
  way is recorded, keyed by its skip count, so a user can still choose).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from hwnas.methods.cell_latency import CellLatencyOptions
from hwnas.derive import derive_cell
from hwnas.archs.genotype import Genotype
from hwnas.methods import SearchMethod
from hwnas.methods.darts import Darts
from hwnas.ops.cell import PRIMITIVES
from hwnas.supernets.cell import CELL_TYPES, CellSupernet, MixedOp, edges_per_cell

if TYPE_CHECKING:
    from hwnas.search import SearchLoop


class PDartsOptions(CellLatencyOptions):
    name: Literal["pdarts"] = "pdarts"
    add_layers: list[int] = Field([0, 6, 12], min_length=1, description="cells added to method.supernet.layers per stage")
    add_width: list[int] = Field([0, 0, 0], min_length=1, description="channels added to init_channels per stage")
    keep_ops: list[int] = Field([5, 3, 1], min_length=1, description="candidates per edge kept after each stage")
    skip_dropout: list[float] = Field([0.1, 0.4, 0.7], min_length=1, description="skip-connect dropout per stage")
    dropout_decay: float = Field(0.2, ge=0.0, description="exponential decay of the dropout once arch steps start")
    skip_limit: int = Field(2, ge=0, description="most skip-connects allowed in the final normal cell")

    @model_validator(mode="after")
    def _stages(self) -> "PDartsOptions":
        n = len(self.add_layers)
        if not len(self.add_width) == len(self.keep_ops) == len(self.skip_dropout) == n:
            raise ValueError("add_layers, add_width, keep_ops and skip_dropout need one entry per stage")
        if self.keep_ops[-1] != 1:
            raise ValueError("keep_ops must end with 1: the final cell has one op per edge")
        previous = len(PRIMITIVES)
        for kept in self.keep_ops:
            if not 1 <= kept < previous:
                raise ValueError(f"keep_ops must shrink from {len(PRIMITIVES)} candidates, got {self.keep_ops}")
            previous = kept
        if any(not 0.0 <= p < 1.0 for p in self.skip_dropout):
            raise ValueError("skip_dropout rates must lie in [0, 1)")
        return self


class SkipDropoutMixedOp(MixedOp):
    """A DARTS mixed op whose stride-1 skip-connect (identity) output goes through dropout."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str]):
        super().__init__(C, stride, primitives)
        self.skip_dropout = 0.0
        self.has_identity_skip = stride == 1 and "skip_connect" in self.primitives

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if not (self.has_identity_skip and self.training and self.skip_dropout > 0):
            return super().forward(x, weights)
        k = self.primitives.index("skip_connect")
        others = weights.clone()
        others[k] = 0.0  # the parent sums every other candidate; skip is added here with dropout
        return super().forward(x, others) + weights[k] * F.dropout(x, self.skip_dropout, training=True)


class PDartsSupernet(CellSupernet):
    mixed_op = SkipDropoutMixedOp

    def set_skip_dropout(self, rate: float) -> None:
        for module in self.modules():
            if isinstance(module, SkipDropoutMixedOp):
                module.skip_dropout = rate


def stage_dropout(rate: float, epoch: int, epochs: int, warmup: int, decay: float) -> float:
    """Dropout rate of the released schedule: linear during warm-up, then exponential decay."""
    if epoch < warmup:
        return rate * (epochs - epoch - 1) / epochs
    return rate * math.exp(-(epoch - warmup) * decay)


def prune_edges(weights: torch.Tensor, edge_primitives: Sequence[Sequence[str]], keep: int) -> list[tuple[str, ...]]:
    """Keep the `keep` strongest candidates of each edge, in their original order."""
    kept = []
    for row, names in zip(weights, edge_primitives):
        best = sorted(torch.topk(row, keep).indices.tolist())
        kept.append(tuple(names[i] for i in best))
    return kept


def limit_skips(weights: torch.Tensor, edge_primitives: Sequence[Sequence[str]], nodes: int, limit: int
                ) -> tuple[tuple, dict[int, list]]:
    """Derive the normal cell with at most `limit` skip-connects.

    Returns the chosen cell and every cell on the way, keyed by its number of skip-connects.
    """
    weights = weights.clone()
    by_skips: dict[int, list] = {}
    chosen = None
    while True:
        pairs = derive_cell(weights, edge_primitives, nodes)
        skips = [i for i, (op, _) in enumerate(pairs) if op == "skip_connect"]
        by_skips.setdefault(len(skips), [list(p) for p in pairs])
        if chosen is None and len(skips) <= limit:
            chosen = pairs
        if not skips:
            return chosen, by_skips
        # the chosen skip-connects, as (weight, edge); drop the weakest from its edge
        weakest = None
        for i in skips:
            node, src = i // 2, pairs[i][1]
            edge = sum(2 + n for n in range(node)) + src
            w = float(weights[edge, list(edge_primitives[edge]).index("skip_connect")])
            if weakest is None or w < weakest[0]:
                weakest = (w, edge)
        edge = weakest[1]
        weights[edge, list(edge_primitives[edge]).index("skip_connect")] = -1.0  # never the best again


class PDarts(Darts):
    name = "pdarts"
    Options = PDartsOptions
    arch_backward = SearchMethod.arch_backward  # P-DARTS searches with first-order DARTS

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stage = 0
        self.skip_report: dict[int, list] = {}

    def build_supernet(self, edge_primitives: dict[str, list] | None = None) -> PDartsSupernet:
        s, o = self.options.supernet, self.options
        return PDartsSupernet(s.init_channels + o.add_width[self.stage], self.num_classes,
                              s.layers + o.add_layers[self.stage], s.nodes, s.stem_multiplier, self.in_channels,
                              edge_primitives=edge_primitives)

    def on_epoch_start(self, model: PDartsSupernet, epoch: int, epochs: int) -> dict[str, float]:
        rate = stage_dropout(self.options.skip_dropout[self.stage], epoch, epochs,
                             self.config.search.arch_start_epoch, self.options.dropout_decay)
        model.set_skip_dropout(rate)
        return {"skip_dropout": rate, **super().on_epoch_start(model, epoch, epochs)}

    def run(self, loop: "SearchLoop") -> Genotype:
        nodes = self.options.supernet.nodes
        primitives = {kind: [PRIMITIVES] * edges_per_cell(nodes) for kind in CELL_TYPES}
        model = None
        for self.stage, keep in enumerate(self.options.keep_ops):
            model = loop.run_stage(f"stage{self.stage + 1}", lambda: self.build_supernet(primitives))
            if keep > 1:
                with torch.no_grad():
                    primitives = {kind: prune_edges(F.softmax(model.alphas[kind], -1), primitives[kind], keep)
                                  for kind in CELL_TYPES}
        return self.derive(model)

    def budget_skip_limit(self) -> int:
        return self.options.skip_limit

    def derive_rule(self, model: CellSupernet, weights: dict[str, torch.Tensor]) -> Genotype:
        """One op per edge, never `none`, top-2 edges per node, at most `skip_limit` normal skips."""
        nodes = model.nodes
        normal, self.skip_report = limit_skips(weights["normal"], model.edge_primitives["normal"], nodes,
                                               self.options.skip_limit)
        reduce = derive_cell(weights["reduce"], model.edge_primitives["reduce"], nodes)
        concat = tuple(range(2, 2 + nodes))
        return Genotype(normal, concat, reduce, concat)

    def report(self) -> dict[str, Any]:
        return {"normal_cells_by_skip_count": {str(k): v for k, v in sorted(self.skip_report.items())}}
