"""Cell spaces (DARTS and its successors): genotypes (hwnas/archs/genotype.py) stacked into cell networks."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from torch import nn

from hwnas.errors import ArchitectureError
from hwnas.kinds.base import ArchKind


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
