"""Mobile ops of the DenseNAS / MobileNetV2 routing space (docs/methods.md: DenseNAS)."""

from __future__ import annotations

import torch
from torch import nn

MBCONV_OPS: tuple[str, ...] = tuple(f"mbconv_k{k}_t{t}" for k in (3, 5, 7) for t in (3, 6))
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
