"""Kinds of architecture, each behind one interface, looked up by `kind`.

A cell space's architectures are genotypes (`hwnas/archs/genotype.py`), a routing space's are routed paths
(`hwnas/archs/routed.py`). What differs between them (how one is read, printed, built into its final network,
keyed for latency, sampled, drawn, trained by default) is asked of `kind_of(arch_or_space)`, so shared
code never tests which type it holds, and a third kind of space is one more class here.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from torch import nn

from hwnas.errors import ArchitectureError


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


class CellKind(ArchKind):
    name = "cell"
    train_recipe = "configs/train/digits.yaml"

    def claims(self, data: dict[str, Any]) -> bool:
        return "normal" in data

    def zoo(self) -> dict[str, Any]:
        from hwnas.archs.genotype import ZOO

        return ZOO

    # dataset -> (init channels, cells, classes, input size) of the published final networks
    FINAL_SETTINGS = {"cifar10": (36, 20, 10, 32), "imagenet": (48, 14, 1000, 224)}

    def info(self, name, arch, dataset, init_channels, layers, num_classes) -> dict[str, Any]:
        from hwnas.models import count_macs, count_parameters
        from hwnas.models.cell_net import NetworkCIFAR, NetworkImageNet

        C, cells, classes, size = self.FINAL_SETTINGS[dataset]
        C, cells, classes = init_channels or C, layers or cells, num_classes or classes
        build = NetworkImageNet if dataset == "imagenet" else NetworkCIFAR
        try:
            model = build(arch, C=C, num_classes=classes, layers=cells, auxiliary=True)
        except ValueError as exc:
            raise ArchitectureError(f"cannot build {name} with C={C}: {exc}") from None
        return {
            "name": name, "network": f"{build.__name__} C={C} cells={cells} classes={classes}",
            "params": count_parameters(model), "macs": count_macs(model, (3, size, size)),
            "input": f"3x{size}x{size}", "arch": arch.to_dict(), "arch_text": str(arch),
        }

    def from_dict(self, data: Any):
        from hwnas.archs.genotype import Genotype

        return Genotype.from_dict(data)

    def text(self, arch) -> str:
        return str(arch)

    def build_model(self, arch, model_cfg, num_classes: int, in_channels: int) -> nn.Module:
        from hwnas.models.cell_net import CellNetwork

        try:
            return CellNetwork(arch, model_cfg.init_channels, num_classes, model_cfg.layers, model_cfg.auxiliary,
                               imagenet=model_cfg.layout == "imagenet", in_channels=in_channels)
        except ValueError as exc:
            raise ArchitectureError(f"cannot build the cell network with C={model_cfg.init_channels}: {exc}") from None

    def latency_network(self, space, arch) -> nn.Module:
        from hwnas.models.cell_net import NetworkCIFAR

        return NetworkCIFAR(arch, C=space.init_channels, num_classes=space.num_classes, layers=space.layers,
                            auxiliary=False, in_channels=space.input_channels).eval()

    def arch_keys(self, space, arch, batch: int) -> list:
        from hwnas.latency.keys import genotype_keys

        return genotype_keys(space, arch, batch)

    def space_keys(self, space, batch: int) -> list:
        from hwnas.latency.keys import cell_space_keys

        return cell_space_keys(space, batch)

    def cost(self, space, table):
        from hwnas.latency.cost import CellCost

        return CellCost(space, table)

    def sample(self, space, rng: random.Random):
        """Random cells: each node takes two distinct earlier states, each with a random op other than none."""
        from hwnas.archs.genotype import Genotype

        ops = [op for op in space.primitives if op != "none"]

        def cell() -> tuple[tuple[str, int], ...]:
            return tuple((rng.choice(ops), state) for node in range(space.nodes)
                         for state in rng.sample(range(node + 2), 2))

        concat = tuple(range(2, space.nodes + 2))
        return Genotype(cell(), concat, cell(), concat)

    def draw(self, arch, out_dir: Path) -> list[Path]:
        from hwnas.plots import draw_genotype

        return draw_genotype(arch, out_dir)

    def table_space(self, arch, table, model_cfg, size: int):
        from hwnas.errors import HwnasError
        from hwnas.spaces.definition import load_space

        space = load_space(table.space)
        if space.kind != self.name:
            raise HwnasError(f"{table.source} is a table of the {space.kind} space {space.name}, not of cell networks")
        ours = (model_cfg.init_channels, model_cfg.layers, size, model_cfg.layout)
        theirs = (space.init_channels, space.layers, space.input_size, "cifar")
        if ours != theirs:
            raise HwnasError(f"{table.source} describes cell networks with C={theirs[0]}, {theirs[1]} cells at "
                             f"{theirs[2]}x{theirs[2]}, this one has C={ours[0]}, {ours[1]} cells at {ours[2]}x{ours[2]}")
        return space


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


KINDS: dict[str, ArchKind] = {kind.name: kind for kind in (CellKind(), RoutingKind())}


def kind_of(arch_or_space) -> ArchKind:
    """The kind of an architecture or a space (both carry `kind`)."""
    return KINDS[arch_or_space.kind]


def build_model(arch, model_cfg, num_classes: int, in_channels: int) -> nn.Module:
    """The final network of an architecture: a cell genotype with `model_cfg`'s layout, a routed one of its space."""
    return kind_of(arch).build_model(arch, model_cfg, num_classes, in_channels)


def arch_from_dict(data: Any):
    """An architecture from its JSON object, of whichever kind claims it."""
    if isinstance(data, dict):
        for kind in KINDS.values():
            if kind.claims(data):
                return kind.from_dict(data)
    raise ArchitectureError("not an architecture: expected a genotype (`normal`, `reduce`) or a routed "
                            "architecture (`space`, `blocks`)")


def zoo() -> dict[str, Any]:
    """Every kind's published architectures, by name."""
    return {name: arch for kind in KINDS.values() for name, arch in kind.zoo().items()}


def load_arch(name_or_path: str | Path, kind: str | None = None):
    """The one reader of architectures: a zoo name, or a JSON file holding one (a search's `arch.json`,
    or a report with an `arch` entry); of any kind, or only of `kind`."""
    kinds = [KINDS[kind]] if kind else list(KINDS.values())
    known = {name: arch for k in kinds for name, arch in k.zoo().items()}
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    path = Path(name_or_path)
    if not path.exists():
        raise ArchitectureError(f"unknown architecture {str(name_or_path)!r}: not a zoo name "
                                f"({', '.join(known)}) and no such file")
    from hwnas.files import read_json

    data = read_json(path, ArchitectureError, "architecture file (arch.json)")
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        data = data["arch"]
    try:
        return kinds[0].from_dict(data) if kind else arch_from_dict(data)
    except ArchitectureError as exc:
        raise ArchitectureError(f"{path}: {exc}") from None


def check_kind(space, arch) -> None:
    if space.kind != arch.kind:
        raise ArchitectureError(f"a {arch.kind} architecture does not belong to the {space.kind} space {space.name}")
