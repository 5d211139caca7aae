"""Candidate operations of the DARTS cell space (REFERENCE.md section 1).

Every conv has `bias=False`. `affine` is False in search supernets and True in final networks.
`OPS[name](C, stride, affine)` builds an op mapping C channels to C channels.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Column order of every alpha matrix.
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
# Ops that exist only for older published cells (NASNet, AmoebaNet).
LEGACY_PRIMITIVES: tuple[str, ...] = ("sep_conv_7x7", "conv_7x1_1x7")


class ReLUConvBN(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise kxk (dilated), pointwise 1x1, BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two [ReLU, depthwise kxk, 1x1, BN] units; only the first depthwise conv carries the stride."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        second = DilConv(C_in, C_out, kernel, 1, padding, 1, affine)
        second[0] = nn.ReLU(inplace=True)  # follows a BN, whose backward does not need its output
        super().__init__(*DilConv(C_in, C_in, kernel, stride, padding, 1, affine), *second)


class Zero(nn.Module):
    """The `none` op: zeros with the stride applied."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two 1x1 stride-2 convs, the second on the input shifted by a pixel."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even output width, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # Padding the shifted branch by one pixel keeps both branches the same size for odd inputs
        # and changes nothing for even ones (the padded pixel is never sampled at stride 2).
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class Conv7x1_1x7(nn.Sequential):
    def __init__(self, C: int, stride: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


def _skip(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine)


OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "conv_7x1_1x7": lambda C, stride, affine: Conv7x1_1x7(C, stride, affine),
}


def drop_leading_relu(op: nn.Module) -> bool:
    """Remove the ReLU an op starts with (the caller then feeds it ReLU(x)); False if it has none.

    Every conv op of an edge starts with ReLU of the same input: a mixed op computes it once.
    """
    if isinstance(op, nn.Sequential) and isinstance(op[0], nn.ReLU):
        op[0] = nn.Identity()
        return True
    if isinstance(op, FactorizedReduce):
        op.relu = nn.Identity()
        return True
    return False


def is_pool(name: str) -> bool:
    return name.endswith("pool_3x3")


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability `drop_prob`, scaling the kept ones by 1/keep."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


# ---- Mobile ops of the DenseNAS / MobileNetV2 routing space (REFERENCE.md section 6) ----

MBCONV_OPS: tuple[str, ...] = tuple(f"mbconv_k{k}_t{t}" for k in (3, 5, 7) for t in (3, 6))
STACK_OPS: tuple[str, ...] = MBCONV_OPS + ("skip_connect",)
BN_EPS_MOBILE = 1e-3  # DenseNAS uses eps 1e-3 in search and retraining


def parse_mbconv(name: str) -> tuple[int, int]:
    """`mbconv_k5_t6` -> (kernel 5, expansion 6)."""
    parts = name.split("_")
    if len(parts) != 3 or parts[0] != "mbconv" or not parts[1][1:].isdigit() or not parts[2][1:].isdigit():
        raise ValueError(f"not an MBConv op name: {name!r} (expected e.g. mbconv_k3_t6)")
    kernel, expansion = int(parts[1][1:]), int(parts[2][1:])
    if kernel % 2 == 0 or expansion < 1:
        raise ValueError(f"{name!r}: the kernel must be odd and the expansion at least 1")
    return kernel, expansion


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand + BN + ReLU6 (absent when t=1), depthwise kxk + BN + ReLU6,
    1x1 project + BN; the input is added when the shapes match."""

    def __init__(self, C_in: int, C_out: int, kernel: int, expansion: int, stride: int, affine: bool = True):
        super().__init__()
        hidden = C_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(C_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden, eps=BN_EPS_MOBILE, affine=affine),
                       nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden, eps=BN_EPS_MOBILE, affine=affine), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, C_out, 1, bias=False), nn.BatchNorm2d(C_out, eps=BN_EPS_MOBILE, affine=affine),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and C_in == C_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class ConvBNReLU6(nn.Sequential):
    """kxk conv + BN + ReLU6: the stem of the routing space and its final 1x1 block."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, affine: bool = True):
        super().__init__(nn.Conv2d(C_in, C_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(C_out, eps=BN_EPS_MOBILE, affine=affine), nn.ReLU6(inplace=True))


def mobile_op(name: str, C_in: int, C_out: int, stride: int, affine: bool = True) -> nn.Module:
    """A candidate of the routing space; `skip_connect` is identity, or 1x1 conv + BN when shapes differ."""
    if name == "skip_connect":
        if C_in == C_out and stride == 1:
            return nn.Identity()
        return nn.Sequential(nn.Conv2d(C_in, C_out, 1, stride, bias=False),
                             nn.BatchNorm2d(C_out, eps=BN_EPS_MOBILE, affine=affine))
    kernel, expansion = parse_mbconv(name)
    return MBConv(C_in, C_out, kernel, expansion, stride, affine)
