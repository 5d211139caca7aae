"""Routing spaces (DenseNAS): routed paths of blocks (hwnas/archs/routed.py) built into mobile networks."""

from __future__ import annotations

import random
from typing import Any

from torch import nn

from hwnas.kinds.base import ArchKind


class RoutingKind(ArchKind):
    name = "routing"
    train_recipe = "configs/train/densenas_digits.yaml"

    def claims(self, data: dict[str, Any]) -> bool:
        return "blocks" in data

    def zoo(self) -> dict[str, Any]:
        from hwnas.archs.routed import ROUTED_ZOO

        return ROUTED_ZOO

    def info(self, name, arch, dataset, init_channels, layers, num_classes) -> dict[str, Any]:
        """A routed network in the space its architecture names, at that space's input size (the
        dataset and cell settings do not apply)."""
        from hwnas.models import count_macs, count_parameters
        from hwnas.models.routed_net import RoutedNetwork

        space = self._space(arch)
        classes = num_classes or space.num_classes
        model = RoutedNetwork(space, arch, classes)
        size = space.input_size
        return {
            "name": name, "network": f"RoutedNetwork space={space.name} classes={classes}",
            "params": count_parameters(model), "macs": count_macs(model, (space.input_channels, size, size)),
            "input": f"{space.input_channels}x{size}x{size}", "arch": arch.to_dict(), "arch_text": arch.format(space),
        }

    def from_dict(self, data: Any):
        from hwnas.archs.routed import RoutedArch

        return RoutedArch.from_dict(data)

    def _space(self, arch):
        from hwnas.spaces.definition import load_space

        return load_space(arch.space)

    def text(self, arch) -> str:
        return arch.format(self._space(arch))

    def space_name(self, arch) -> str | None:
        return arch.space

    def input_shape(self, arch) -> tuple[int, int] | None:
        space = self._space(arch)
        return space.input_channels, space.input_size

    def build_model(self, arch, model_cfg, num_classes: int, in_channels: int) -> nn.Module:
        from hwnas.errors import DataError
        from hwnas.models.routed_net import RoutedNetwork

        space = self._space(arch)
        if in_channels != space.input_channels:
            raise DataError(f"the {space.name} space takes {space.input_channels}-channel input but the data has "
                            f"{in_channels}; set data.channels: {space.input_channels}")
        return RoutedNetwork(space, arch, num_classes, model_cfg.dropout, model_cfg.zero_init_residual)

    def latency_network(self, space, arch) -> nn.Module:
        from hwnas.models.routed_net import RoutedNetwork

        return RoutedNetwork(space, arch).eval()

    def arch_keys(self, space, arch, batch: int) -> list:
        from hwnas.latency.keys import routed_arch_keys

        return routed_arch_keys(space, arch, batch)

    def space_keys(self, space, batch: int) -> list:
        from hwnas.latency.keys import routing_space_keys

        return routing_space_keys(space, batch)

    def cost(self, space, table):
        from hwnas.latency.cost import RoutingCost

        return RoutingCost(space, table)

    def sample(self, space, rng: random.Random):
        """A uniform random walk from block 0 to the final block, with uniform head and stack ops (skip
        layers dropped). Not uniform over architectures (short paths are favoured): for baselines use
        hwnas.baselines.random_routed_archs."""
        from hwnas.archs.routed import RoutedArch, RoutedBlock

        blocks, current = [], 0
        while True:
            target = rng.choice(space.targets(current))
            if target == space.final_block:
                return RoutedArch(space.name, tuple(blocks))
            stack = tuple(op for op in (rng.choice(space.stack_ops) for _ in range(space.stack_layers[target]))
                          if op != "skip_connect")
            blocks.append(RoutedBlock(target, rng.choice(space.head_ops), stack))
            current = target

    def table_space(self, arch, table, model_cfg, size: int):
        return self._space(arch)
