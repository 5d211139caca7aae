"""Whole networks of a space: random architectures, their final networks and their latency keys.
Used to calibrate a table while profiling and to validate it afterwards."""

from __future__ import annotations

import random

from torch import nn

from hwnas.archs.genotype import Genotype
from hwnas.kinds import check_kind, kind_of
from hwnas.latency.keys import OpKey
from hwnas.archs.routed import RoutedArch
from hwnas.spaces.definition import CellSpace, RoutingSpace

Arch = RoutedArch | Genotype


def arch_keys(space: RoutingSpace | CellSpace, arch: Arch, batch: int = 1) -> list[tuple[str, OpKey]]:
    check_kind(space, arch)
    return kind_of(space).arch_keys(space, arch, batch)


def build_network(space: RoutingSpace | CellSpace, arch: Arch) -> nn.Module:
    check_kind(space, arch)
    return kind_of(space).latency_network(space, arch)


def input_shape(space: RoutingSpace | CellSpace, batch: int = 1) -> tuple[int, int, int, int]:
    return (batch, space.input_channels, space.input_size, space.input_size)


def sample_arch(space: RoutingSpace | CellSpace, rng: random.Random) -> Arch:
    return kind_of(space).sample(space, rng)
