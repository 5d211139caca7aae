"""The interface every kind of architecture implements (hwnas/kinds/__init__.py looks a kind up)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from torch import nn

class ArchKind:
    """What shared code needs of one kind of architecture (and of the spaces it lives in)."""

    name: str          # the `kind` field of its spaces and of its architectures' JSON
    train_recipe: str  # the final-training recipe `hwnas train` uses when none is given

    def claims(self, data: dict[str, Any]) -> bool:
        """Whether a JSON object is an architecture of this kind."""
        raise NotImplementedError

    def zoo(self) -> dict[str, Any]:
        """The published architectures of this kind, by name."""
        return {}

    def info(self, name: str, arch, dataset: str, init_channels: int | None, layers: int | None,
             num_classes: int | None) -> dict[str, Any]:
        """Size of the architecture's final network as `hwnas info --arch` reports it."""
        raise NotImplementedError

    def from_dict(self, data: Any):
        raise NotImplementedError

    def text(self, arch) -> str:
        """The architecture as `hwnas train` and reports print it."""
        raise NotImplementedError

    def space_name(self, arch) -> str | None:
        """The space the architecture names itself, if it does (a genotype fits any cell network)."""
        return None

    def input_shape(self, arch) -> tuple[int, int] | None:
        """(channels, side) the architecture fixes, or None when the dataset decides."""
        return None

    def build_model(self, arch, model_cfg, num_classes: int, in_channels: int) -> nn.Module:
        """The trainable final network (with the recipe's `model:` settings)."""
        raise NotImplementedError

    def latency_network(self, space, arch) -> nn.Module:
        """The eval-mode network whose latency a table of `space` predicts for `arch`."""
        raise NotImplementedError

    def arch_keys(self, space, arch, batch: int) -> list:
        raise NotImplementedError

    def space_keys(self, space, batch: int) -> list:
        raise NotImplementedError

    def cost(self, space, table):
        """The table's latencies of every choice of the space (`hwnas/latency/cost.py`)."""
        raise NotImplementedError

    def sample(self, space, rng: random.Random):
        """A random architecture of the space."""
        raise NotImplementedError

    def draw(self, arch, out_dir: Path) -> list[Path]:
        """Pictures of the architecture a search leaves in its run folder."""
        return []

    def table_space(self, arch, table, model_cfg, size: int):
        """The space of `table` in which to price `arch` as built with `model_cfg`; an error when the
        table describes another network."""
        raise NotImplementedError
