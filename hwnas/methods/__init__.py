"""Search methods. Each file holds what makes one method itself; the loop lives in `hwnas.search`.

A method plugs into the shared loop through `SearchMethod`:

- `build_supernet` -- the supernet (`hwnas/supernets/base.py`: what the loop needs of it);
- `on_epoch_start` -- per-epoch hooks (temperature, warm-up, dropout), returning values to log;
- `sample` -- what the supernet runs in the coming weight or architecture step (DenseNAS's sampled ops);
- `loss` / `arch_loss` -- the weight-step loss and the architecture-step loss (extra terms go here);
- `arch_backward` -- fills the architecture gradients (first order by default; DARTS may unroll);
- `after_arch_step` -- anything after the architecture optimiser step;
- `before_evaluation` -- what the supernet runs when evaluated after an epoch;
- `epoch_metrics` -- values logged at the end of an epoch;
- `derive` -- the architecture the current weights stand for;
- `report` -- method-specific entries for the run's report;
- `supernet_summary` -- how `hwnas info --supernet` names the supernet and its input;
- `plots` -- method-specific pictures of the run, written at the end;
- `state_dict` / `load_state_dict` -- the method's own state (a multiplier, a curve), checkpointed;
- `run` -- the whole search; a method that chains several searches (P-DARTS) overrides it;
- `use_table` -- (with `refits_to_measured_latency`) derive again with a rescaled table, as `hwnas run`
  does when the derived network misses its budget as measured.

`SearchConfig`, the config of a search, is defined here: it is made of the methods' own `Options`.

The DARTS-family methods share `CellMethod` (methods/cell_latency.py): they say which weights their
derivation ranks (`derive_weights`) and their rule (`derive_rule`), and get the latency loss and the
budget-constrained derivation from it.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator

import torch
import torch.nn.functional as F
from pydantic import SerializeAsAny, ValidationError, field_validator, model_validator
from torch import nn

from hwnas.config import (MethodConfig, SearchDataConfig, SearchLoopConfig, Strict, check_device,
                          format_validation_error)
from hwnas.errors import ConfigError

if TYPE_CHECKING:
    from hwnas.search import HeldOut, SearchLoop

# method name -> "module:class" under hwnas.methods
_REGISTRY = {
    "darts": "darts:Darts",
    "densenas": "densenas:DenseNas",
    "gdas": "gdas:Gdas",
    "gdas-frc": "gdas:GdasFrc",
    "pcdarts": "pcdarts:PcDarts",
    "pdarts": "pdarts:PDarts",
}

Batch = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Parameters that need no gradient in this step: autograd then neither computes their gradients
    (a conv's weight gradient is most of its backward) nor keeps the activations only those need."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class SearchMethod:
    name: ClassVar[str]
    Options: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: SearchConfig, num_classes: int, in_channels: int):
        self.config = config
        self.options = config.method
        self.num_classes = num_classes
        self.in_channels = in_channels

    def build_supernet(self) -> nn.Module:
        raise NotImplementedError

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> dict[str, float]:
        return {}

    def sample(self, model: nn.Module, step: str) -> None:
        """Choose what the supernet runs in the coming step, `step` "weights" or "arch" (DenseNAS draws its
        ops here). Default: nothing to choose; GDAS's Gumbel draw and PC-DARTS's channel sample are part
        of their supernets' forward, fresh in every pass."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    def arch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss(model, x, y)

    def arch_backward(self, model: nn.Module, train_batch: Batch, val_batch: Batch,
                      weight_optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        """First-order: the gradient of the architecture loss on a validation batch."""
        with frozen(model.weight_parameters()):
            loss, logits = self.arch_loss(model, *val_batch)
            loss.backward()
        return loss, logits

    def after_arch_step(self, model: nn.Module) -> None:
        pass

    def before_evaluation(self, model: nn.Module) -> None:
        """Set what the supernet runs when the loop evaluates it after an epoch (default: as it is)."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Values to log at the end of an epoch (the terms of the architecture loss, say)."""
        return {}

    def derive(self, model: nn.Module) -> Any:
        raise NotImplementedError

    def derive_final(self, model: nn.Module, held_out: "HeldOut") -> Any:
        """The architecture a finished search hands on, also what `hwnas run`'s budget fit derives again:
        `derive`, unless a method also tests candidates on held-out images (`hwnas.search.HeldOut`)."""
        return self.derive(model)

    # `hwnas run` times the derived network and, when it misses the budget, derives again from the same
    # supernet with the table rescaled by measured / predicted: a method that can do that says so, and
    # takes the rescaled table in `use_table`; its `space` is the space the table keys
    refits_to_measured_latency: ClassVar[bool] = False

    def use_table(self, table) -> None:
        raise NotImplementedError

    def arch_weights(self, model: nn.Module) -> dict[str, Any]:
        """Normalised architecture weights, for metrics and plots: per kind a matrix (rows x ops) or a
        vector, or `{"values": matrix, "rows": [...], "columns": [...]}` to name the plot's axes."""
        return {}

    def report(self) -> dict[str, Any]:
        """Method-specific entries for `report.json`."""
        return {}

    def plots(self, history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        """Pictures of the run, written at the end: by default the architecture weights over the epochs."""
        from hwnas.plots import plot_arch_weights

        return plot_arch_weights(history, out_dir)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def supernet_summary(self) -> dict[str, Any]:
        """How `hwnas info --supernet` shows the supernet: `network` (a line of text) and `input` (its
        channels, height, width)."""
        raise NotImplementedError

    def describe(self, arch: Any) -> dict[str, Any]:
        """How the report shows the derived architecture (`arch_text`, and anything else worth saying)."""
        return {"arch_text": str(arch)}

    def run(self, loop: "SearchLoop") -> Any:
        model = loop.run_stage("search", self.build_supernet)
        return self.derive_final(model, loop.held_out())


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def run_method_names() -> list[str]:
    """The methods `hwnas run` can search with (`SearchMethod.refits_to_measured_latency`)."""
    return [name for name in method_names() if get_method(name).refits_to_measured_latency]


def get_method(name: str) -> type[SearchMethod]:
    if name not in _REGISTRY:
        raise ConfigError(f"method.name: unknown method {name!r}; choose one of {', '.join(method_names())}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"hwnas.methods.{module}"), cls)


class SearchConfig(Strict):
    """A search: the method and its own options (each method declares them as its `Options`), the data and the loop.

    It lives beside the method registry because it is made of the methods' options: the config module
    knows no method, and a method registers its options by naming them on its class.
    """

    # SerializeAsAny: dump the method's own options too, not only the base class's `name`
    method: SerializeAsAny[MethodConfig]
    seed: int = 2
    device: str = "cpu"
    data: SearchDataConfig = SearchDataConfig()
    search: SearchLoopConfig = SearchLoopConfig()

    @field_validator("method", mode="before")
    @classmethod
    def _method_options(cls, value: Any) -> MethodConfig:
        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, MethodConfig):
            return value
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise ValueError("expected a mapping with a `name` (for example `method: {name: darts}`)")
        try:
            return get_method(value["name"]).Options.model_validate(value)
        except ValidationError as exc:  # re-raised whole so the keys keep their `method.` prefix
            raise ConfigError(format_validation_error(exc, prefix="method.")) from None

    _device = field_validator("device")(lambda value: check_device(value))

    @model_validator(mode="before")
    @classmethod
    def _supernet_belongs_to_the_method(cls, data: Any) -> Any:
        if isinstance(data, dict) and "supernet" in data:
            # a ConfigError (not a ValueError) so the message is this one line, as a field error would be
            raise ConfigError("supernet: the cell supernet's settings are options of the cell methods; move the "
                              "`supernet:` block under `method:` (method.supernet.layers, ...)")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "SearchConfig":
        if self.search.arch_start_epoch >= self.search.epochs:
            raise ValueError(
                f"search.arch_start_epoch ({self.search.arch_start_epoch}) must be below "
                f"search.epochs ({self.search.epochs}), or the architecture never moves"
            )
        return self
