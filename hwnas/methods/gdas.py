"""GDAS (Dong & Yang, 2019): sample one op per edge with hard Gumbel-softmax (docs/methods.md: GDAS).

Per edge and per forward pass, from the edge's alphas:

    g = -log(E),  E ~ Exponential(1)                 (Gumbel noise; redrawn if anything is inf/NaN)
    p = softmax((log_softmax(alpha) + g) / tau)
    i = argmax p
    h = onehot(i) - p.detach() + p                   (value: exactly one-hot; gradient: that of p)

and the edge outputs `op_i(x) * h_i`: **only the sampled op is computed**, so a step costs a
fraction of a DARTS step, while dh_i/dalpha = dp_i/dalpha reaches every alpha of the edge. All
normal cells share one sample per forward pass, all reduction cells another (`CellSupernet.forward`
asks `op_weights` once per cell type). The temperature tau falls linearly per epoch from `tau_max`
(first epoch) to `tau_min` (last epoch); it is a function of the epoch, so a resumed run has it right.

Derivation: the DARTS rule (`derive_cell`) on softmax(alpha) -- per node the two incoming edges with
the strongest non-`none` op. The GDAS release instead takes the top-2 (op, input) pairs over all
incoming edges (two may share an input); the DARTS rule is an option.

`gdas-frc` searches only the normal cell: the supernet's reduction cells are the fixed reduction
cell of the final network (`FixedReductionCell`, run without drop-path), there is no `alphas.reduce`,
and the derived genotype has `reduce=None`, from which `NetworkCIFAR` builds that same fixed cell.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from hwnas.derive import derive_cell
from hwnas.errors import ConfigError
from hwnas.archs.genotype import Genotype
from hwnas.methods.cell_latency import CellLatencyOptions, CellMethod
from hwnas.models.cell_net import FixedReductionCell
from hwnas.supernets.cell import CellSupernet, MixedOp


class GdasOptions(CellLatencyOptions):
    name: Literal["gdas"] = "gdas"
    tau_max: float = Field(10.0, gt=0.0, description="Gumbel-softmax temperature at the first epoch")
    tau_min: float = Field(0.1, gt=0.0, description="Gumbel-softmax temperature at the last epoch")

    @field_validator("tau_min")
    @classmethod
    def _below_tau_max(cls, value: float, info: ValidationInfo) -> float:
        tau_max = info.data.get("tau_max")  # absent when tau_max itself was invalid
        if tau_max is not None and value >= tau_max:
            raise ValueError(f"must be below tau_max ({tau_max}): the temperature decays")
        return value


class GdasFrcOptions(GdasOptions):
    name: Literal["gdas-frc"] = "gdas-frc"  # type: ignore[assignment]


# --- sampling --------------------------------------------------------------------------------------
def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise shaped like `like`: -log of Exponential(1) samples (global torch RNG)."""
    return -torch.empty_like(like).exponential_().log()


def hard_gumbel_softmax(alpha: torch.Tensor, tau: float) -> torch.Tensor:
    """One sample per row of `alpha` (edges x candidates): exactly one-hot rows, gradients through p."""
    log_probs = F.log_softmax(alpha, dim=-1)
    while True:
        g = gumbel_noise(alpha)
        p = F.softmax((log_probs + g) / tau, dim=-1)
        # Exponential(1) can return 0 (g = inf, then p has NaN): draw again, as the release does
        if torch.isfinite(g).all() and torch.isfinite(p).all():
            break
    one_hot = torch.zeros_like(p).scatter_(-1, p.argmax(dim=-1, keepdim=True), 1.0)
    # In float arithmetic (1 - p) + p == 1 and (0 - p) + p == 0 exactly, so h is one-hot in value.
    return one_hot - p.detach() + p


def temperature(epoch: int, epochs: int, tau_max: float, tau_min: float) -> float:
    """Linear from tau_max at epoch 0 to tau_min at epoch `epochs - 1` (a one-epoch search stays at tau_max)."""
    if epochs <= 1:
        return tau_max
    t = epoch / (epochs - 1)
    return (1 - t) * tau_max + t * tau_min  # this form gives both ends exactly, with no rounding


# --- supernet --------------------------------------------------------------------------------------
class GdasMixedOp(MixedOp):
    """One edge under GDAS: `weights` is the edge's hard sample h; only op i = argmax h runs."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str]):
        super().__init__(C, stride, primitives)
        self.stride = stride

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        i = int(weights.argmax())  # h is exactly one-hot, so this is the sampled index
        name = self.primitives[i]
        if name == "none":  # zeros with the stride applied; there is nothing to compute
            out = x[:, :, :: self.stride, :: self.stride].mul(0.0)
        else:  # the conv candidates had their leading ReLU removed: feed them ReLU(x), as MixedOp does
            out = self.ops[name](F.relu(x) if name in self.takes_relu else x)
        return out * weights[i]  # times 1.0 in value; carries the gradient to every alpha of the edge


class GdasSupernet(CellSupernet):
    """`CellSupernet` whose op weights are one hard Gumbel sample per cell type and forward pass."""

    mixed_op = GdasMixedOp
    tau: float = 10.0  # set by `Gdas.on_epoch_start`

    def op_weights(self, kind: str) -> torch.Tensor:
        return hard_gumbel_softmax(self.alphas[kind], self.tau)


class SearchFixedReductionCell(FixedReductionCell):
    """The GDAS-FRC reduction cell inside the supernet: no architecture weights and no drop-path.

    It is the final network's cell (affine BN included), so search and final reductions agree.
    """

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, op_weights: None = None,
                edge_weights: None = None) -> torch.Tensor:
        return super().forward(s0, s1, drop_prob=0.0)


class GdasFrcSupernet(GdasSupernet):
    """Only the normal cell is searched; every reduction is the fixed reduction cell."""

    searched_cells = ("normal",)

    def make_cell(self, nodes, C_pp, C_p, C, reduction, reduction_prev, edge_primitives) -> nn.Module:
        if reduction:
            return SearchFixedReductionCell(C_pp, C_p, C, reduction_prev)
        return super().make_cell(nodes, C_pp, C_p, C, reduction, reduction_prev, edge_primitives)


# --- methods ---------------------------------------------------------------------------------------
class Gdas(CellMethod):
    name = "gdas"
    Options = GdasOptions
    supernet_class: type[GdasSupernet] = GdasSupernet

    def build_supernet(self) -> GdasSupernet:
        s = self.options.supernet
        model = self.supernet_class(s.init_channels, self.num_classes, s.layers, s.nodes, s.stem_multiplier,
                                    self.in_channels)
        model.tau = self.options.tau_max
        return model

    def on_epoch_start(self, model: GdasSupernet, epoch: int, epochs: int) -> dict[str, float]:
        model.tau = temperature(epoch, epochs, self.options.tau_max, self.options.tau_min)
        return {"tau": model.tau, **super().on_epoch_start(model, epoch, epochs)}

    def _probs(self, model: GdasSupernet) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {kind: F.softmax(alpha, dim=-1) for kind, alpha in model.alphas.items()}

    def derive_weights(self, model: GdasSupernet) -> dict[str, torch.Tensor]:
        return self._probs(model)

    def arch_weights(self, model: GdasSupernet) -> dict[str, list]:
        return {kind: probs.cpu().tolist() for kind, probs in self._probs(model).items()}


class GdasFrc(Gdas):
    name = "gdas-frc"
    Options = GdasFrcOptions
    supernet_class = GdasFrcSupernet

    def __init__(self, config, num_classes: int, in_channels: int):
        if config.method.table:
            raise ConfigError("method.table: latency tables have no keys for GDAS's fixed reduction cell; "
                              "search with `gdas` for a latency-aware search")
        super().__init__(config, num_classes, in_channels)

    def build_supernet(self) -> GdasFrcSupernet:
        C = self.options.supernet.init_channels
        if (2 * C) % 8:  # the fixed cell's (1,3)/(3,1) convs use 8 groups; the first reduction has 2C channels
            raise ConfigError(f"method.supernet.init_channels must be a multiple of 4 for gdas-frc, got {C}")
        return super().build_supernet()

    def derive_rule(self, model: GdasFrcSupernet, weights: dict[str, torch.Tensor]) -> Genotype:
        normal = derive_cell(weights["normal"], model.edge_primitives["normal"], model.nodes)
        return Genotype(normal, tuple(range(2, 2 + model.nodes)), None, None)
