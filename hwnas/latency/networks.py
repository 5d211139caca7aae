"""Whole networks of a space: random architectures, their final networks and their latency keys.
Used to calibrate a table while profiling and to validate it afterwards."""

from __future__ import annotations

import random

from torch import nn

from hwnas.errors import ArchitectureError
from hwnas.genotypes import Genotype
from hwnas.latency.keys import OpKey, genotype_keys, routed_arch_keys
from hwnas.models.cell_net import NetworkCIFAR
from hwnas.models.routed_net import RoutedNetwork
from hwnas.routed import RoutedArch, RoutedBlock
from hwnas.spaces.definition import CellSpace, RoutingSpace

Arch = RoutedArch | Genotype


def sample_routed_arch(space: RoutingSpace, rng: random.Random) -> RoutedArch:
    """A uniform random walk from block 0 to the final block, with uniform head and stack ops (skip
    layers dropped)."""
    blocks, current = [], 0
    while True:
        target = rng.choice(space.targets(current))
        if target == space.final_block:
            return RoutedArch(space.name, tuple(blocks))
        stack = tuple(op for op in (rng.choice(space.stack_ops) for _ in range(space.stack_layers[target]))
                      if op != "skip_connect")
        blocks.append(RoutedBlock(target, rng.choice(space.head_ops), stack))
        current = target


def sample_genotype(space: CellSpace, rng: random.Random) -> Genotype:
    """Random cells: each node takes two distinct earlier states, each with a random op other than none."""
    ops = [op for op in space.primitives if op != "none"]

    def cell() -> tuple[tuple[str, int], ...]:
        return tuple((rng.choice(ops), state) for node in range(space.nodes)
                     for state in rng.sample(range(node + 2), 2))

    concat = tuple(range(2, space.nodes + 2))
    return Genotype(cell(), concat, cell(), concat)


def arch_keys(space: RoutingSpace | CellSpace, arch: Arch, batch: int = 1) -> list[tuple[str, OpKey]]:
    if isinstance(space, RoutingSpace) != isinstance(arch, RoutedArch):
        raise ArchitectureError(f"a {'routed' if isinstance(arch, RoutedArch) else 'cell'} architecture does not "
                                f"belong to the {space.kind} space {space.name}")
    return routed_arch_keys(space, arch, batch) if isinstance(arch, RoutedArch) else genotype_keys(space, arch, batch)


def build_network(space: RoutingSpace | CellSpace, arch: Arch) -> nn.Module:
    if isinstance(arch, RoutedArch):
        return RoutedNetwork(space, arch).eval()
    return NetworkCIFAR(arch, C=space.init_channels, num_classes=space.num_classes, layers=space.layers,
                        auxiliary=False, in_channels=space.input_channels).eval()


def input_shape(space: RoutingSpace | CellSpace, batch: int = 1) -> tuple[int, int, int, int]:
    return (batch, space.input_channels, space.input_size, space.input_size)


def sample_arch(space: RoutingSpace | CellSpace, rng: random.Random) -> Arch:
    return sample_routed_arch(space, rng) if isinstance(space, RoutingSpace) else sample_genotype(space, rng)
