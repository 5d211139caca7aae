"""Latency-aware cell search, shared by DARTS, GDAS, PC-DARTS and P-DARTS (none of their releases has it).

With `method.table` (a table of a cell space, e.g. darts_cifar10: NetworkCIFAR C=36, 20 cells), the
search knows the latency of the *final* network its genotype will build. `CellCost` gives the expected
latency of that network under the architecture weights, differentiable in the alphas, and the exact
latency of a derived genotype. With `method.budget_ms` the architecture loss becomes

    L_val + mu * (E[LAT] / B - 1)          mu += dual_lr * (E[LAT] / B - 1) after each architecture step

(the dual ascent of DenseNAS's budget mode), and the derivation picks the best-scoring genotype whose
table latency lies in [(1 - budget_slack) B, B] (`budget_genotype`; with a loose budget it is the
method's usual rule), so the final network never exceeds B by the table. With
`budget_anneal_epochs` the multiplier aims at a target that falls from the supernet's expected latency
to B over those architecture epochs (`BudgetMultiplier`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.config import CellSupernetConfig, resolve_path
from hwnas.derive import budget_genotype, derive_genotype
from hwnas.errors import ConfigError
from hwnas.archs.genotype import Genotype
from hwnas.ops.cell import PRIMITIVES
from hwnas.latency.cost import CellCost
from hwnas.latency.objective import LatencyObjective, LatencyOptions
from hwnas.methods import SearchMethod
from hwnas.supernets.cell import CELL_TYPES


class CellLatencyOptions(LatencyOptions):
    """What every cell method takes: its supernet, and the latency options (`hwnas/latency/objective.py`);
    each method adds its own."""

    supernet: CellSupernetConfig = CellSupernetConfig()


class CellMethod(SearchMethod):
    """A DARTS-family method: `derive_weights` says which weights its rule ranks, `derive_rule` is the rule."""

    def __init__(self, config, num_classes: int, in_channels: int):
        super().__init__(config, num_classes, in_channels)
        self.latency: LatencyObjective | None = None
        if self.options.table:
            self.latency = LatencyObjective(self._cost(self.options.table), self.options, config.search,
                                            self.expected_latency)

    @property
    def budget(self):
        return self.latency.budget if self.latency else None

    def _cost(self, table_path: str) -> CellCost:
        from hwnas.latency.table import load_table
        from hwnas.spaces.definition import load_space

        table = load_table(resolve_path(table_path))
        space = load_space(table.space)
        if space.kind != "cell":
            raise ConfigError(f"method.table: {table.source} is a table of the {space.kind} space {space.name}; "
                              "cell methods need a table of a cell space (e.g. darts_cifar10)")
        if space.nodes != self.options.supernet.nodes:
            raise ConfigError(f"method.table: {space.name} cells have {space.nodes} nodes, the supernet "
                              f"{self.options.supernet.nodes} (method.supernet.nodes)")
        return CellCost(space, table)

    # ---- what each method says ----
    def derive_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights the method's derivation ranks, per cell type (edges x candidates)."""
        return {kind: F.softmax(model.alphas[kind], dim=-1) for kind in CELL_TYPES}

    def derive_rule(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> Genotype:
        return derive_genotype(weights, model.edge_primitives, model.nodes)

    def budget_skip_limit(self) -> int | None:
        return None

    # ---- hooks ----
    def derive(self, model: nn.Module) -> Genotype:
        with torch.no_grad():
            weights = self.derive_weights(model)
        if self.budget is None:
            return self.derive_rule(model, weights)
        low, budget = self.latency.window()
        return budget_genotype(weights, model.edge_primitives, model.nodes, self.latency.cost, budget, low,
                               self.budget_skip_limit())

    def expected_latency(self, model: nn.Module) -> torch.Tensor:
        probs = {kind: F.softmax(model.alphas[kind], dim=-1) for kind in CELL_TYPES}
        return self.latency.cost.expected(probs, model.edge_primitives)

    def arch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = self.loss(model, x, y)
        if self.budget is not None:
            loss = loss + self.latency.budget_penalty(self.latency.latency(model))
        return loss, logits

    def after_arch_step(self, model: nn.Module) -> None:
        if self.latency:
            self.latency.after_arch_step()

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> dict[str, float]:
        if self.latency is None:
            return {}
        self.latency.begin_epoch(epoch)
        return self.latency.record(model)

    def state_dict(self) -> dict[str, Any]:
        return self.latency.state_dict() if self.latency else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.latency:
            self.latency.load_state_dict(state)

    def supernet_summary(self) -> dict[str, Any]:
        s = self.options.supernet
        return {"network": f"C={s.init_channels} cells={s.layers} nodes={s.nodes}", "input": (self.in_channels, 32, 32)}

    def describe(self, arch: Genotype) -> dict[str, Any]:
        out: dict[str, Any] = {"arch_text": str(arch)}
        if self.latency:
            out.update(self.latency.describe(arch), budget_ms=self.options.budget_ms,
                       expected_latency_ms_by_epoch=self.latency.history)
        return out

    def plots(self, history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        """The architecture weights (columns: the cell's candidate ops) and, with a table, the latency."""
        from hwnas.plots import plot_arch_weights

        plots = plot_arch_weights(history, out_dir, column_names=PRIMITIVES)
        if self.latency:
            plots += self.latency.plots(history, out_dir, "expected latency of the final network (ms)")
        return plots
