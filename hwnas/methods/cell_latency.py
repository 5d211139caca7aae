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
from pydantic import Field, model_validator
from torch import nn

from hwnas.config import MethodConfig, resolve_path
from hwnas.derive import budget_genotype, derive_genotype
from hwnas.errors import ConfigError, HwnasError
from hwnas.genotypes import Genotype
from hwnas.latency.cost import BudgetMultiplier, CellCost, check_anneal
from hwnas.methods import SearchMethod
from hwnas.spaces.cell import CELL_TYPES


class CellLatencyOptions(MethodConfig):
    table: str | None = Field(None, description="latency table of a cell space: the final network's latency")
    budget_ms: float | None = Field(None, gt=0.0, allow_inf_nan=False, description="latency budget (ms) of the final network")
    dual_lr: float = Field(0.05, gt=0.0, description="step of the budget multiplier's dual ascent")
    budget_slack: float = Field(0.05, ge=0.0, lt=1.0,
                                description="derive within [(1 - slack) * B, B] when such a genotype exists")
    budget_anneal_epochs: int = Field(0, ge=0, description="architecture epochs over which the multiplier's target falls "
                                      "from the supernet's expected latency to the budget (0: the budget from the start)")

    @model_validator(mode="after")
    def _budget_needs_table(self) -> "CellLatencyOptions":
        if self.budget_ms is not None and self.table is None:
            raise ValueError("budget_ms needs a latency table of a cell space (method.table or --table)")
        if self.budget_anneal_epochs and self.budget_ms is None:
            raise ValueError("budget_anneal_epochs needs a budget (budget_ms or --budget-ms)")
        return self


class CellMethod(SearchMethod):
    """A DARTS-family method: `derive_weights` says which weights its rule ranks, `derive_rule` is the rule."""

    def __init__(self, config, num_classes: int, in_channels: int):
        super().__init__(config, num_classes, in_channels)
        self.cost: CellCost | None = None
        self.budget: BudgetMultiplier | None = None
        self.latency_history: list[float] = []
        self._latency = 0.0
        if self.options.table:
            self.cost = self._cost(self.options.table)
            if self.options.budget_ms is not None:
                low, high = self.cost.bounds()
                if self.options.budget_ms < low:
                    raise HwnasError(f"a budget of {self.options.budget_ms:g} ms is below the smallest latency any "
                                     f"{self.cost.space.name} network has with this table ({low:.3f} ms); the "
                                     f"feasible range is {low:.3f} to {high:.3f} ms")
                self.budget = BudgetMultiplier(self.options.budget_ms, self.options.dual_lr,
                                               self.options.budget_anneal_epochs)
                check_anneal(self.options.budget_anneal_epochs, config.search)

    def _cost(self, table_path: str) -> CellCost:
        from hwnas.latency.table import load_table
        from hwnas.spaces.definition import load_space

        table = load_table(resolve_path(table_path))
        space = load_space(table.space)
        if space.kind != "cell":
            raise ConfigError(f"method.table: {table.source} is a table of the {space.kind} space {space.name}; "
                              "cell methods need a table of a cell space (e.g. darts_cifar10)")
        if space.nodes != self.config.supernet.nodes:
            raise ConfigError(f"method.table: {space.name} cells have {space.nodes} nodes, the supernet "
                              f"{self.config.supernet.nodes} (supernet.nodes)")
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
        budget = self.options.budget_ms
        return budget_genotype(weights, model.edge_primitives, model.nodes, self.cost, budget,
                               (1 - self.options.budget_slack) * budget, self.budget_skip_limit())

    def expected_latency(self, model: nn.Module) -> torch.Tensor:
        probs = {kind: F.softmax(model.alphas[kind], dim=-1) for kind in CELL_TYPES}
        return self.cost.expected(probs, model.edge_primitives)

    def arch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = self.loss(model, x, y)
        if self.budget is not None:
            latency = self.expected_latency(model)
            self._latency = latency.item()
            loss = loss + self.budget.penalty(latency)
        return loss, logits

    def after_arch_step(self, model: nn.Module) -> None:
        if self.budget is not None:
            self.budget.update(self._latency)

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> dict[str, float]:
        if self.cost is None:
            return {}
        with torch.no_grad():
            latency = float(self.expected_latency(model))
        self.latency_history.append(latency)
        if self.budget is None:
            return {"expected_latency_ms": latency}
        self.budget.begin_arch_epoch(epoch - self.config.search.arch_start_epoch)
        return {"expected_latency_ms": latency, "mu": self.budget.mu, "budget_target_ms": self.budget.target_ms}

    def state_dict(self) -> dict[str, Any]:
        return {**(self.budget.state_dict() if self.budget else {}), "latency_history": list(self.latency_history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.budget is not None:
            self.budget.load_state_dict(state)
        self.latency_history = [float(v) for v in state.get("latency_history", [])]

    def describe(self, arch: Genotype) -> dict[str, Any]:
        out: dict[str, Any] = {"arch_text": str(arch)}
        if self.cost is not None:
            from hwnas.latency.validate import predict

            prediction = predict(self.cost.table, self.cost.space, arch)
            out.update(predicted_latency_ms=prediction["predicted_ms"], latency_breakdown_ms=prediction["breakdown_ms"],
                       feasible_latency_ms=list(self.cost.bounds()),
                       budget_ms=self.options.budget_ms, expected_latency_ms_by_epoch=self.latency_history)
        return out

    def plots(self, history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        from hwnas.plots import plot_metric_curve

        return plot_metric_curve(history, "expected_latency_ms", "expected latency of the final network (ms)",
                                 out_dir / "expected_latency.png", self.options.budget_ms)
