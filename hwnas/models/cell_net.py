"""Final networks built from a cell `Genotype` (docs/methods.md: DARTS cell space, GDAS).

`NetworkCIFAR` and `NetworkImageNet` follow the published layouts; a genotype with `reduce=None`
builds the GDAS fixed reduction cell at each reduction.
"""

from __future__ import annotations

import torch
from torch import nn

from hwnas.archs.genotype import Genotype, Pairs
from hwnas.ops.cell import OPS, FactorizedReduce, ReLUConvBN, drop_path


def reduction_indices(layers: int) -> tuple[int, int]:
    return layers // 3, 2 * layers // 3


def preprocess_inputs(C_pp: int, C_p: int, C: int, reduction_prev: bool, affine: bool) -> tuple[nn.Module, nn.Module]:
    """Bring the two cell inputs to C channels (and to the same resolution after a reduction)."""
    pre0 = FactorizedReduce(C_pp, C, affine) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, affine)
    return pre0, ReLUConvBN(C_p, C, 1, 1, 0, affine)


class Cell(nn.Module):
    """A final cell: node i = op_a(state_a) + op_b(state_b); output = concat of the chosen nodes."""

    def __init__(self, pairs: Pairs, concat: tuple[int, ...], C_pp: int, C_p: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = preprocess_inputs(C_pp, C_p, C, reduction_prev, affine=True)
        self.inputs = [src for _, src in pairs]
        self.concat = list(concat)
        self.multiplier = len(concat)
        self.ops = nn.ModuleList(
            OPS[op](C, 2 if reduction and src < 2 else 1, True) for op, src in pairs
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(len(self.ops) // 2):
            total = 0
            for k in (2 * node, 2 * node + 1):
                op = self.ops[k]
                h = op(states[self.inputs[k]])
                if self.training and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class FixedReductionCell(nn.Module):
    """GDAS-FRC: four fixed branches, each halving the resolution; output 4C channels."""

    def __init__(self, C_pp: int, C_p: int, C: int, reduction_prev: bool):
        super().__init__()
        self.reduction = True
        self.multiplier = 4
        self.preprocess0, self.preprocess1 = preprocess_inputs(C_pp, C_p, C, reduction_prev, affine=True)

        def factorized_conv() -> nn.Module:
            return nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(C, C, (1, 3), stride=(1, 2), padding=(0, 1), groups=8, bias=False),
                nn.Conv2d(C, C, (3, 1), stride=(2, 1), padding=(1, 0), groups=8, bias=False),
                nn.BatchNorm2d(C),
                nn.ReLU(inplace=False),
                nn.Conv2d(C, C, 1, bias=False),
                nn.BatchNorm2d(C),
            )

        def pool() -> nn.Module:
            return nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.BatchNorm2d(C))

        self.conv_branches = nn.ModuleList([factorized_conv(), factorized_conv()])
        self.pool_branches = nn.ModuleList([pool(), pool()])

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        inputs = (self.preprocess0(s0), self.preprocess1(s1))
        outs = [branch(x) for branch, x in zip(self.conv_branches, inputs)]
        outs += [branch(x) for branch, x in zip(self.pool_branches, inputs)]
        if self.training:
            outs = [drop_path(h, drop_prob) for h in outs]
        return torch.cat(outs, dim=1)


def make_cell(genotype: Genotype, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool) -> nn.Module:
    if reduction and genotype.fixed_reduction:
        return FixedReductionCell(C_pp, C_p, C, reduction_prev)
    pairs, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
    return Cell(pairs, concat, C_pp, C_p, C, reduction, reduction_prev)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier after the second reduction (CIFAR: 8x8 input; ImageNet: 14x14, no BN after 768)."""

    def __init__(self, C: int, num_classes: int, imagenet: bool):
        super().__init__()
        layers = [
            nn.ReLU(inplace=False),  # its input is also the next cell's input
            nn.AvgPool2d(5, stride=2 if imagenet else 3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if not imagenet:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class CellNetwork(nn.Module):
    """Stem, a stack of cells (C doubling at the two reductions), optional auxiliary head, classifier.

    `forward` returns logits; in training with an auxiliary head it returns (logits, aux_logits).
    `drop_path_prob` is set by the training loop each epoch.
    """

    def __init__(self, genotype: Genotype, C: int, num_classes: int, layers: int, auxiliary: bool,
                 imagenet: bool, in_channels: int = 3, stem_multiplier: int = 3):
        super().__init__()
        self.genotype = genotype
        self.drop_path_prob = 0.0
        reductions = reduction_indices(layers)
        if imagenet:
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C // 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C),
            )
            self.stem1 = nn.Sequential(
                nn.ReLU(inplace=True),
                nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C),
            )
            C_pp, C_p, C_curr, reduction_prev = C, C, C, True
        else:
            C_stem = stem_multiplier * C
            self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
            C_pp, C_p, C_curr, reduction_prev = C_stem, C_stem, C, False
        self.imagenet = imagenet
        self.cells = nn.ModuleList()
        C_aux = None
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            cell = make_cell(genotype, C_pp, C_p, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if i == reductions[1]:
                C_aux = C_p
        self.aux_index = reductions[1]
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, imagenet) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: torch.Tensor):
        if self.imagenet:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(torch.flatten(self.global_pooling(s1), 1))
        return (logits, logits_aux) if logits_aux is not None else logits


def NetworkCIFAR(genotype: Genotype, C: int = 36, num_classes: int = 10, layers: int = 20,
                 auxiliary: bool = True, in_channels: int = 3) -> CellNetwork:
    return CellNetwork(genotype, C, num_classes, layers, auxiliary, imagenet=False, in_channels=in_channels)


def NetworkImageNet(genotype: Genotype, C: int = 48, num_classes: int = 1000, layers: int = 14,
                    auxiliary: bool = True, in_channels: int = 3) -> CellNetwork:
    return CellNetwork(genotype, C, num_classes, layers, auxiliary, imagenet=True, in_channels=in_channels)
