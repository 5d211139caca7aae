"""PC-DARTS (Xu et al., 2020): partial channel connections and edge normalisation.

docs/methods.md: PC-DARTS. Two changes to the DARTS supernet, and nothing else:

- **Partial channels.** Each mixed op's candidates are built for C/K channels and see only the
  first C/K channels of the input; the other channels bypass them (through MaxPool 2x2 stride 2
  on reduction edges, so the shapes match). Output = channel_shuffle(concat(processed, bypassed), K),
  which spreads the processed channels to every K-th position for the next layer. K=4 on
  CIFAR, 2 on ImageNet (`method.k`). Memory and time per step drop by about K.
- **Edge normalisation.** One weight beta per edge (per cell type, `1e-3 * randn`); node =
  `sum_e softmax(beta)_e * mixedop_e`, the softmax taken over each node's incoming edges. It
  steadies the edge choice that partial channels make noisy. At derivation an edge scores
  `softmax(alpha)_e * softmax(beta)_e`, then the DARTS top-2 rule; beta never changes the op
  chosen on an edge.

The weights-only warm-up (architecture frozen for 15 epochs) is the generic recipe option
`search.arch_start_epoch`; the architecture step is first order, as released.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hwnas.errors import ConfigError
from hwnas.methods.cell_latency import CellLatencyOptions, CellMethod
from hwnas.supernets.cell import CELL_TYPES, CellSupernet, MixedOp, edges_per_cell


class PcDartsOptions(CellLatencyOptions):
    name: Literal["pcdarts"] = "pcdarts"
    k: int = Field(4, ge=1, description="each mixed op works on 1/k of the channels (4 on CIFAR, 2 on ImageNet)")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """view (B, K, C/K, H, W) -> transpose 1, 2 -> flatten, as in the PC-DARTS release.

    Channel `g * C/K + i` moves to `i * K + g`: group 0 (the processed channels) lands at
    positions 0, K, 2K, ... `F.channel_shuffle` is exactly this, and keeps channels_last tensors
    channels_last (a plain view/transpose/reshape would copy them back to NCHW).
    """
    return F.channel_shuffle(x, groups)


class PartialChannelMixedOp(MixedOp):
    """A DARTS mixed op on the first C/K channels; the rest bypass it, then the channels are shuffled."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str], k: int):
        if C % k:
            raise ValueError(f"a partial-channel mixed op needs C divisible by k, got C={C}, k={k}")
        super().__init__(C // k, stride, primitives)
        self.k = k
        # ceil_mode matches the stride-2 candidates (ceil(H/2)) on odd sizes; same as floor on even ones
        self.bypass = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.k == 1:  # every channel is processed: a plain DARTS mixed op
            return super().forward(x, weights)
        split = x.shape[1] // self.k
        processed = super().forward(x[:, :split], weights)
        bypassed = self.bypass(x[:, split:])
        return channel_shuffle(torch.cat([processed, bypassed], dim=1), self.k)


class PcDartsSupernet(CellSupernet):
    """The DARTS search network with partial-channel mixed ops and one beta per edge."""

    arch_weight_dicts = ("alphas", "betas")

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, nodes: int = 4,
                 stem_multiplier: int = 3, in_channels: int = 3, k: int = 4):
        # CellSupernet builds its cells with `self.mixed_op`; K must be known by then
        self.mixed_op = partial(PartialChannelMixedOp, k=k)
        super().__init__(C, num_classes, layers, nodes, stem_multiplier, in_channels)
        self.k = k
        self.betas = nn.ParameterDict({
            kind: nn.Parameter(1e-3 * torch.randn(edges_per_cell(nodes))) for kind in CELL_TYPES
        })

    def edge_weights(self, kind: str) -> torch.Tensor:
        """softmax(beta) over each node's incoming edges (2, 3, 4, ... of them), flat per edge."""
        betas, start, per_node = self.betas[kind], 0, []
        for node in range(self.nodes):
            per_node.append(F.softmax(betas[start:start + 2 + node], dim=-1))
            start += 2 + node
        return torch.cat(per_node)


class PcDarts(CellMethod):
    name = "pcdarts"
    Options = PcDartsOptions

    def build_supernet(self) -> PcDartsSupernet:
        s, k = self.options.supernet, self.options.k
        # every cell width is init_channels times a power of 2, so this one check covers all cells
        if s.init_channels % k:
            raise ConfigError(f"method.supernet.init_channels ({s.init_channels}) must be divisible by method.k ({k}): "
                              f"each mixed op works on init_channels/k channels")
        return PcDartsSupernet(s.init_channels, self.num_classes, s.layers, s.nodes, s.stem_multiplier,
                               self.in_channels, k)

    def edge_scores(self, model: PcDartsSupernet, kind: str) -> torch.Tensor:
        """softmax(alpha) scaled by each edge's normalised beta: ranks edges by both, keeps op order."""
        return model.op_weights(kind) * model.edge_weights(kind)[:, None]

    def derive_weights(self, model: PcDartsSupernet) -> dict[str, torch.Tensor]:
        return {kind: self.edge_scores(model, kind) for kind in CELL_TYPES}

    def arch_weights(self, model: PcDartsSupernet) -> dict[str, list]:
        """softmax(alpha) per cell type (as DARTS), plus `<kind>_edges`: the per-node softmax of beta."""
        with torch.no_grad():
            weights = {kind: model.op_weights(kind).cpu().tolist() for kind in CELL_TYPES}
            weights.update({f"{kind}_edges": model.edge_weights(kind).cpu().tolist() for kind in CELL_TYPES})
        return weights
