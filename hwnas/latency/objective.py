"""The latency side of a latency-aware search, one for every method: the options, the expected latency of
the final network as a loss term, the budget's multiplier, and what is recorded of both.

A method gives the objective its table's cost (`hwnas/latency/cost.py`: a routing or a cell space) and a
function of the supernet that returns the expected latency under the architecture weights,
differentiable in them. With `budget_ms` the architecture loss gains `mu * (E[LAT] / target - 1)`, mu
learnt by dual ascent (`BudgetMultiplier`), and the derivation looks for the best architecture whose
table latency lies in [(1 - budget_slack) B, B] (`window`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import Field, model_validator
from torch import nn

from hwnas.config import MethodConfig
from hwnas.errors import ConfigError, HwnasError
from hwnas.latency.cost import BudgetMultiplier


def check_anneal(anneal_epochs: int, recipe: Any) -> None:
    """The annealed target must reach the budget before the search ends."""
    arch_epochs = recipe.epochs - recipe.arch_start_epoch
    if anneal_epochs > arch_epochs:
        raise ConfigError(f"budget_anneal_epochs is {anneal_epochs} but the search has only {arch_epochs} "
                          f"architecture epoch(s) (search.epochs - search.arch_start_epoch): the target would "
                          f"never reach the budget")


class LatencyOptions(MethodConfig):
    """The options of every latency-aware method."""

    table: str | None = Field(None, description="latency table CSV of the searched space (or, for the cell methods, "
                                                 "of a cell space such as darts_cifar10): the final network's latency")
    budget_ms: float | None = Field(None, gt=0.0, allow_inf_nan=False, description="latency budget (ms) of the final network")
    dual_lr: float = Field(0.05, gt=0.0, description="budget: step of the multiplier's dual ascent")
    budget_slack: float = Field(0.05, ge=0.0, lt=1.0,
                                description="budget: derive within [(1 - slack) * B, B] when such a network exists")
    budget_anneal_epochs: int = Field(0, ge=0, description="budget: architecture epochs over which the multiplier's "
                                      "target falls from the supernet's expected latency to the budget (0: the budget from the start)")

    @model_validator(mode="after")
    def _a_budget_needs_a_table(self) -> "LatencyOptions":
        if self.budget_ms is not None and self.table is None:
            raise ValueError("budget_ms needs a latency table (method.table or --table)")
        return self


class LatencyObjective:
    def __init__(self, cost, options: LatencyOptions, recipe, expected: Callable[[nn.Module], torch.Tensor]):
        self.cost, self.options, self.expected = cost, options, expected
        self.arch_start_epoch = recipe.arch_start_epoch
        self.budget: BudgetMultiplier | None = None
        if options.budget_ms is not None:
            low, high = cost.bounds()
            if options.budget_ms < low:
                raise HwnasError(f"a budget of {options.budget_ms:g} ms is below the smallest latency any "
                                 f"{cost.space.name} network has with this table ({low:.3f} ms); the feasible "
                                 f"range is {low:.3f} to {high:.3f} ms")
            check_anneal(options.budget_anneal_epochs, recipe)
            self.budget = BudgetMultiplier(options.budget_ms, options.dual_lr, options.budget_anneal_epochs)
        self.history: list[float] = []  # the expected latency, epoch by epoch
        self._latency = 0.0

    def begin_epoch(self, epoch: int) -> None:
        if self.budget:
            self.budget.begin_arch_epoch(epoch - self.arch_start_epoch)

    def latency(self, model: nn.Module) -> torch.Tensor:
        """The expected latency now (ms), differentiable; remembered for the multiplier's update."""
        latency = self.expected(model)
        self._latency = latency.item()
        return latency

    def budget_penalty(self, latency: torch.Tensor) -> torch.Tensor:
        return self.budget.penalty(latency)

    def after_arch_step(self) -> None:
        if self.budget:
            self.budget.update(self._latency)

    def record(self, model: nn.Module) -> dict[str, float]:
        """The expected latency now, and the multiplier and its target: a row of the epoch's metrics."""
        with torch.no_grad():
            latency = float(self.expected(model))
        self.history.append(latency)
        if self.budget is None:
            return {"expected_latency_ms": latency}
        return {"expected_latency_ms": latency, "mu": self.budget.mu, "budget_target_ms": self.budget.target_ms}

    def window(self) -> tuple[float, float]:
        """[(1 - slack) B, B]: where the derivation looks first."""
        budget = self.options.budget_ms
        return (1 - self.options.budget_slack) * budget, budget

    def state_dict(self) -> dict[str, Any]:
        return {**(self.budget.state_dict() if self.budget else {}), "latency_history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.budget:
            self.budget.load_state_dict(state)
        self.history = [float(v) for v in state.get("latency_history", [])]

    def report(self) -> dict[str, Any]:
        return {"budget_ms": self.options.budget_ms, "expected_latency_ms_by_epoch": self.history,
                **({"mu": self.budget.mu} if self.budget else {})}

    def describe(self, arch) -> dict[str, Any]:
        """The derived architecture's table latency, by block, and the space's feasible range."""
        from hwnas.latency.validate import predict

        prediction = predict(self.cost.table, self.cost.space, arch)
        return {"predicted_latency_ms": prediction["predicted_ms"], "latency_breakdown_ms": prediction["breakdown_ms"],
                "feasible_latency_ms": list(self.cost.bounds())}

    def plots(self, history: list[dict[str, Any]], out_dir: Path, label: str) -> list[Path]:
        from hwnas.plots import plot_metric_curve

        return plot_metric_curve(history, "expected_latency_ms", label, out_dir / "expected_latency.png",
                                 self.options.budget_ms)
