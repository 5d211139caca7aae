"""The final network of a routed architecture (docs/methods.md: DenseNAS): stem, the routing blocks on the
path (head op + kept stack ops), the final 1x1 block, global pooling and the classifier."""

from __future__ import annotations

import torch
from torch import nn

from hwnas.ops.mobile import ConvBNReLU6, MBConv, mobile_op
from hwnas.archs.routed import RoutedArch
from hwnas.spaces.definition import RoutingSpace


def routed_stem(space: RoutingSpace) -> nn.Sequential:
    """conv3x3 (stride 1 or 2) + BN + ReLU6, then the fixed stem op: the output of block 0."""
    w0 = space.widths[0]
    return nn.Sequential(ConvBNReLU6(space.input_channels, w0, 3, space.stem_stride), mobile_op(space.stem_op, w0, w0, 1))


def routed_classifier(width: int, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes))


class RoutedNetwork(nn.Module):
    def __init__(self, space: RoutingSpace, arch: RoutedArch, num_classes: int | None = None, dropout: float = 0.0,
                 zero_init_residual: bool = False):
        super().__init__()
        arch.check(space)
        self.arch = arch
        self.stem = routed_stem(space)
        blocks = []
        for prev, b in zip(arch.path, arch.blocks):
            width = space.width(b.block)
            layers = [mobile_op(b.head, space.width(prev), width, space.stride(prev, b.block))]
            layers += [mobile_op(op, width, width, 1) for op in b.stack]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.final = ConvBNReLU6(space.width(arch.path[-1]), space.final_width, 1, 1)
        self.classifier = routed_classifier(space.final_width, num_classes or space.num_classes, dropout)
        if zero_init_residual:
            for op in self.blocks.modules():
                if isinstance(op, MBConv) and op.residual:
                    nn.init.zeros_(op.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.final(self.blocks(self.stem(x))))
