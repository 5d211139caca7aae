"""DenseNAS (Fang et al., 2020): densely connected routing search with a latency loss
(docs/methods.md: DenseNAS, Latency losses).

What makes DenseNAS DenseNAS, on the shared loop:

- **The routing supernet** (`hwnas/supernets/routing.py`): every routing path is evaluated in each
  forward pass, blocks weighted by the betas of their sources' outgoing connections.
- **Candidate weights**: each candidate MBConv its own weights (the release), or `weight_sharing:
  nested`, slices of one superkernel per layer, which a CPU search trains in minutes.
- **Sampling** (ProxylessNAS style). Weight steps run one op per mixed op: uniformly before the
  architecture updates start, then drawn from softmax(alpha) (or still uniformly, `weight_sampling:
  uniform`, so the ops the architecture weights disfavour early keep training). Architecture steps draw two distinct
  ops per mixed op and weigh them by the softmax over those two alphas. After each Adam step the two
  sampled alphas are shifted by log(sum exp(old)) - log(sum exp(new)), so the ops not sampled keep
  their share of probability.
- **Latency as a loss** (`hwnas/latency/cost.py`): the chained expected latency LAT from the table,
  differentiable in betas and alphas, enters architecture steps only:
    `densenas`: CE + lambda * log(LAT) / log(tau)         (the release: lambda 0.15, tau 15 ms)
    `budget`:   CE + mu * (LAT / B - 1)                   (B = budget_ms)
  In `budget` mode mu is a Lagrange multiplier for LAT = B, updated by dual ascent after every
  architecture step, mu += dual_lr * (LAT / B - 1): it grows while the supernet is slower than the
  budget and falls, below zero, while it is faster, so LAT is driven to B from either side without
  tuning a trade-off by hand. With `budget_anneal_epochs` the target B of both starts at the
  supernet's expected latency and falls to B over those architecture epochs (`BudgetMultiplier`).
- **Derivation** (`hwnas/derive.py`): Viterbi path selection; with a budget, the most probable
  architecture whose table latency lies in [(1 - budget_slack) * B, B] (else the most probable under
  B), so the derived network never exceeds the budget by the table and does not leave most of it
  unused when the search has not converged to it. With `derive_candidates: N` the finished search also
  draws N architectures from its distribution within that window and keeps the one most accurate with
  the supernet's shared weights (`derive_final`; an addition to the release, which derives by Viterbi alone).

- **Evaluation** after each epoch, as the release evaluates: every op weighted by softmax(alpha).

The release alternates whole epochs of weight and architecture updates (`search.alternate: epoch`).
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from hwnas.config import resolve_path
from hwnas.derive import RoutingWeights, budget_viterbi, draw, viterbi
from hwnas.errors import ConfigError
from hwnas.latency.cost import RoutingCost
from hwnas.latency.objective import LatencyObjective, LatencyOptions
from hwnas.latency.table import load_table
from hwnas.methods import SearchMethod
from hwnas.archs.routed import RoutedArch
from hwnas.spaces.definition import load_space, space_path
from hwnas.supernets.ranking import shared_weight_accuracy
from hwnas.supernets.routing import RoutingSupernet


class DenseNasOptions(LatencyOptions):
    """DenseNAS's own options; the table, budget and multiplier are every latency-aware method's
    (`hwnas/latency/objective.py`)."""

    name: Literal["densenas"] = "densenas"
    space: str = Field("densenas_32", description="routing space: a name under configs/spaces/ or a YAML file")
    latency_loss: Literal["densenas", "budget", "none"] = "densenas"
    lambda_: float = Field(0.15, alias="lambda", gt=0.0, description="densenas loss weight")
    tau_ms: float = Field(15.0, gt=1.0, description="densenas loss: log(LAT) / log(tau)")
    weight_sharing: Literal["independent", "nested"] = Field(
        "independent", description="candidate MBConvs with their own weights (the release) or nested slices of "
                                   "one superkernel, which trains in far fewer steps (hwnas/supernets/routing.py)")
    derive_candidates: int = Field(
        0, ge=0, description="budget: also draw this many architectures from the search's distribution within the "
                             "budget window and keep, of them and the most probable one, the most accurate with the "
                             "supernet's shared weights on the architecture half (0: the most probable)")
    weight_sampling: Literal["architecture", "uniform"] = Field(
        "architecture", description="the op a weight step runs per layer once architecture steps start: drawn from "
                                    "softmax(alpha) (ProxylessNAS) or uniformly, so every candidate keeps training")

    model_config = {**LatencyOptions.model_config, "populate_by_name": True}

    @model_validator(mode="before")
    @classmethod
    def _budget_turns_budget_mode_on(cls, data: Any) -> Any:
        """One setting turns the budget on: `budget_ms` alone means `latency_loss: budget`."""
        if isinstance(data, dict) and data.get("budget_ms") is not None:
            loss = data.get("latency_loss", "budget")
            if loss != "budget":
                raise ValueError(f"budget_ms is set but latency_loss is {loss!r}, which has no budget; "
                                 "drop latency_loss (budget_ms alone searches under the budget) or budget_ms")
            data = {**data, "latency_loss": "budget"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "DenseNasOptions":
        if self.latency_loss == "budget" and self.budget_ms is None:
            raise ValueError("latency_loss: budget needs budget_ms (or --budget-ms)")
        if self.derive_candidates and self.budget_ms is None:
            raise ValueError("derive_candidates draws candidates within the budget window: it needs budget_ms "
                             "(or --budget-ms)")
        if self.latency_loss != "none" and self.table is None:
            raise ValueError(f"latency_loss: {self.latency_loss} needs a latency table (method.table or --table)")
        return self


def sample_ops(alphas: torch.Tensor, count: int, uniform: bool, generator: torch.Generator | None = None) -> list[int]:
    """`count` distinct op indices, uniformly or in proportion to softmax(alphas)."""
    probs = torch.ones_like(alphas) if uniform else F.softmax(alphas.detach(), dim=-1)
    return torch.multinomial(probs, count, replacement=False, generator=generator).tolist()


def rescale_sampled(alphas: torch.Tensor, before: torch.Tensor, sampled: list[int]) -> None:
    """Shift the sampled alphas so their total softmax mass is what it was before the step."""
    with torch.no_grad():
        idx = torch.tensor(sampled)
        offset = torch.logsumexp(before[idx], 0) - torch.logsumexp(alphas[idx], 0)
        alphas[idx] += offset


class DenseNas(SearchMethod):
    name = "densenas"
    Options = DenseNasOptions
    refits_to_measured_latency = True

    def __init__(self, config, num_classes: int, in_channels: int):
        super().__init__(config, num_classes, in_channels)
        space = load_space(self.options.space)
        if space.kind != "routing":
            raise ConfigError(f"method.space: {space.name} is a {space.kind} space; DenseNAS searches routing spaces")
        if in_channels != space.input_channels:
            raise ConfigError(f"the data has {in_channels} channel(s) but {space.name} takes {space.input_channels}; "
                              f"set data.channels: {space.input_channels}")
        self.space = space
        self.latency = (LatencyObjective(RoutingCost(space, load_table(resolve_path(self.options.table))),
                                         self.options, config.search, self.expected_latency)
                        if self.options.table else None)
        self.arch_updates_started = False
        self._sampled: dict[str, list[int]] = {}
        self._before: dict[str, torch.Tensor] = {}
        self._terms: dict[str, list[float]] = {"arch_ce": [], "arch_latency_term": []}
        self._candidates: list[dict[str, Any]] = []

    @property
    def budget(self):
        return self.latency.budget if self.latency else None

    def expected_latency(self, model: RoutingSupernet) -> torch.Tensor:
        return self.latency.cost.expected(model)

    def build_supernet(self) -> nn.Module:
        return RoutingSupernet(self.space, self.num_classes, nested=self.options.weight_sharing == "nested")

    # ---- hooks ----
    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> dict[str, float]:
        self.arch_updates_started = epoch >= self.config.search.arch_start_epoch
        if self.latency:
            self.latency.begin_epoch(epoch)
        self._terms = {"arch_ce": [], "arch_latency_term": []}
        return {}

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """The two terms of the architecture loss (means over the epoch's architecture steps), and the
        expected latency and multiplier they leave at the end of the epoch."""
        out = {name: sum(values) / len(values) if values else float("nan") for name, values in self._terms.items()}
        return {**out, **(self.latency.record(model) if self.latency else {})}

    def before_evaluation(self, model: nn.Module) -> None:
        """Evaluate as the release does: every op of every mixed op, weighted by softmax(alpha)."""
        for op, alphas in model.mixed_ops().values():
            op.active = list(range(len(op.ops)))
            op.weights = F.softmax(alphas.detach(), dim=-1)

    def sample(self, model: RoutingSupernet, step: str) -> None:
        """The ops each mixed op runs in the step: one for a weight step, two (weighted by the softmax over
        their alphas) for an architecture step, whose alphas are kept to rescale after the step."""
        count = 2 if step == "arch" else 1
        for name, (op, alphas) in model.mixed_ops().items():
            uniform = count == 1 and (not self.arch_updates_started or self.options.weight_sampling == "uniform")
            sampled = sample_ops(alphas, count, uniform=uniform)
            op.active = sampled
            op.weights = F.softmax(alphas[sampled], dim=-1) if count > 1 else None
            self._sampled[name] = sampled
        if step == "arch":
            self._before = {name: alphas.detach().clone() for name, (_, alphas) in model.mixed_ops().items()}

    def arch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        self._terms["arch_ce"].append(loss.item())
        if self.latency and self.options.latency_loss != "none":
            latency = self.latency.latency(model)
            if self.options.latency_loss == "densenas":
                term = self.options.lambda_ * torch.log(latency) / math.log(self.options.tau_ms)
            else:
                term = self.latency.budget_penalty(latency)
            self._terms["arch_latency_term"].append(term.item())
            loss = loss + term
        return loss, logits

    def after_arch_step(self, model: nn.Module) -> None:
        for name, (_, alphas) in model.mixed_ops().items():
            rescale_sampled(alphas, self._before[name], self._sampled[name])
        if self.latency:
            self.latency.after_arch_step()

    def plots(self, history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        plots = super().plots(history, out_dir)
        return plots + (self.latency.plots(history, out_dir, "expected latency (ms)") if self.latency else [])

    def state_dict(self) -> dict[str, Any]:
        return self.latency.state_dict() if self.latency else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.latency:
            self.latency.load_state_dict(state)

    # ---- architecture ----
    def weights(self, model: RoutingSupernet) -> RoutingWeights:
        space = self.space
        with torch.no_grad():
            return RoutingWeights(
                edges={b: model.edge_probs(b).tolist() for b in range(space.num_blocks)},
                heads={(j, i): F.softmax(model.head_alphas(j, i), -1).tolist()
                       for j in range(1, space.num_blocks) for i in space.sources(j)},
                stacks={j: [F.softmax(a, -1).tolist() for a in model.stack_alphas(j)]
                        for j in range(1, space.num_blocks) if space.stack_layers[j]})

    def use_table(self, table) -> None:
        self.latency.cost = RoutingCost(self.space, table)

    def derive(self, model: nn.Module) -> RoutedArch:
        weights = self.weights(model)
        if self.budget:
            low, budget = self.latency.window()
            arch = budget_viterbi(self.space, weights, self.latency.cost, budget, low)
        else:
            arch = viterbi(self.space, weights)
        return self._named(arch)

    def _named(self, arch: RoutedArch) -> RoutedArch:
        """A user's own space is named by its file, so `hwnas train` and `export` can load it again."""
        shipped = space_path(self.space.name) == space_path(self.options.space)
        return arch if shipped else replace(arch, space=str(space_path(self.options.space).resolve()))

    def derive_final(self, model: nn.Module, held_out) -> RoutedArch:
        """With `derive_candidates`, the most probable architecture under the budget and that many drawn from
        the search's distribution within the budget window, each tested with the supernet's shared weights
        on the architecture half; the most accurate is kept (on a tie, the earlier: the most probable).

        Why: the architecture weights rank what the search saw, but they move by a few hundred noisy
        two-op comparisons, and under a tight budget the latency term moves them more than the
        cross-entropy does (the ops end near uniform apart from the cheapest). Testing the candidates
        with the trained supernet measures each whole network instead of summing per-op preferences. It
        helps only where the shared weights rank networks as training does, which the dense supernet's
        did not on Fashion-MNIST (docs/searching.md): off by default."""
        arch = self.derive(model)
        if not self.options.derive_candidates:
            return arch
        low, high = self.latency.window()
        weights, cost, rng = self.weights(model), self.latency.cost, random.Random(self.config.seed)
        candidates = [arch]
        for _ in range(1000 * self.options.derive_candidates):
            if len(candidates) > self.options.derive_candidates:
                break
            drawn = self._named(draw(self.space, weights, rng))
            if drawn not in candidates and low <= cost.exact(drawn) <= high:
                candidates.append(drawn)
        calibration, evaluation = held_out.calibration(), held_out.evaluation()
        self._candidates = [
            {"arch": c.to_dict(), "arch_text": str(c), "predicted_ms": round(cost.exact(c), 4),
             "shared_weight_acc": shared_weight_accuracy(model, lambda x, c=c: model.forward_path(x, c),
                                                         calibration, evaluation)}
            for c in candidates]
        best = max(range(len(candidates)), key=lambda i: (self._candidates[i]["shared_weight_acc"], -i))
        for i, row in enumerate(self._candidates):
            row.update(most_probable=i == 0, kept=i == best)
        return candidates[best]

    def arch_weights(self, model: nn.Module) -> dict[str, Any]:
        """Head and stack op probabilities, labelled: the plots' rows are branches and layers, not indices."""
        weights, space = self.weights(model), self.space
        layers = [(j, l, p) for j, ps in weights.stacks.items() for l, p in enumerate(ps)]
        return {
            "head": {"values": list(weights.heads.values()), "columns": space.head_ops,
                     "rows": [f"block {j} <- {i}" for j, i in weights.heads]},
            "stack": {"values": [p for *_, p in layers], "columns": space.stack_ops,
                      "rows": [f"block {j} layer {l}" for j, l, _ in layers]},
        }

    def report(self) -> dict[str, Any]:
        return {"space": self.space.name, "latency_loss": self.options.latency_loss,
                **({"candidates": self._candidates} if self._candidates else {}),
                **(self.latency.report() if self.latency else {"budget_ms": None, "expected_latency_ms_by_epoch": []})}

    def supernet_summary(self) -> dict[str, Any]:
        space = self.space
        return {"network": f"routing supernet space={space.name} (first op of every layer)",
                "input": (space.input_channels, space.input_size, space.input_size)}

    def describe(self, arch: RoutedArch) -> dict[str, Any]:
        """The derived architecture's text and, with a table, its latency by block."""
        return {"arch_text": arch.format(self.space), **(self.latency.describe(arch) if self.latency else {})}
