"""Candidate operations of the DARTS cell space (docs/methods.md: DARTS cell space).

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


class _PointwiseConvBN(torch.autograd.Function):
    """BN(conv1x1(z)) in training mode, keeping one activation where autograd would keep two.

    Unfused, the conv keeps z (for its weight gradient) and BN keeps the conv's output x (as large as z).
    - Weights training: keep z; backward recomputes x (one cheap 1x1 conv more).
    - Conv weight frozen and BN not affine (a search's architecture step): keep the output y instead,
      which the mixed op keeps anyway for the architecture gradient; BN's backward needs only the
      normalised input, which is y, and the conv's input gradient needs only its weight.
    The numbers are the same as unfused. The first mode's backward is made of differentiable ops, so
    double backward works (the second has no use for it and refuses it).
    """

    @staticmethod
    def forward(ctx, z, weight, bn_weight, bn_bias, running_mean, running_var, momentum: float, eps: float):
        y, mean, invstd = torch.ops.aten.native_batch_norm(F.conv2d(z, weight), bn_weight, bn_bias, running_mean,
                                                           running_var, True, momentum, eps)
        ctx.keep_output = not ctx.needs_input_grad[1] and bn_weight is None
        ctx.save_for_backward(y if ctx.keep_output else z, weight, bn_weight, mean, invstd)
        ctx.eps, ctx.input_shape = eps, z.shape
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        kept, weight, bn_weight, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if ctx.keep_output:
            if torch.is_grad_enabled():
                raise RuntimeError("double backward through a frozen 1x1 conv + BN is not supported")
            # BN backward at x_hat = y: mean 0, invstd 1, and the true invstd as the affine weight
            grad_x = torch.ops.aten.native_batch_norm_backward(
                grad, kept, invstd, None, None, torch.zeros_like(mean), torch.ones_like(invstd), True, ctx.eps,
                [True, False, False])[0]
            return torch.nn.grad.conv2d_input(ctx.input_shape, weight, grad_x), None, None, None, None, None, None, None
        grad_x, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
            grad, F.conv2d(kept, weight), bn_weight, None, None, mean, invstd, True, ctx.eps,
            [True, bn_weight is not None and needs[2], bn_weight is not None and needs[3]])
        grad_z, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_x, kept, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [needs[0], needs[1], False])
        return grad_z, grad_weight, grad_bn_weight, grad_bn_bias, None, None, None, None


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, z: torch.Tensor) -> torch.Tensor:
    """`bn(conv(z))`; a training 1x1 conv (stride 1, no bias) + plain BN runs as `_PointwiseConvBN`."""
    pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and conv.bias is None
    # exact type: SyncBatchNorm and hwnas.distributed.GlobalBatchNorm must keep their own forward
    if not (pointwise and type(bn) is nn.BatchNorm2d and bn.training and torch.is_grad_enabled()):
        return bn(conv(z))
    return _PointwiseConvBN.apply(z, conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                  count_training_batch(bn), bn.eps)


def count_training_batch(bn: nn.BatchNorm2d) -> float:
    """What nn.BatchNorm2d.forward does before a training batch: count it and return the running
    statistics' update factor (momentum, or 1/batches seen when momentum is None; unused without them)."""
    if not bn.track_running_stats:
        return 0.0
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


class _ConvBNSequential(nn.Sequential):
    """A Sequential whose (conv, BN) pairs run through `conv_bn` (same modules, same state_dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        modules = list(self)
        i = 0
        while i < len(modules):
            if i + 1 < len(modules) and isinstance(modules[i], nn.Conv2d) and isinstance(modules[i + 1], nn.BatchNorm2d):
                x = conv_bn(modules[i], modules[i + 1], x)
                i += 2
            else:
                x = modules[i](x)
                i += 1
        return x


class ReLUConvBN(_ConvBNSequential):
    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


def _space_to_batch(x: torch.Tensor, d: int) -> torch.Tensor:
    """(N, C, H, W) -> (d*d*N, C, H/d, W/d); image n*d*d + a*d + b of the result is x[n, :, a::d, b::d].

    One copy, made in the tensor's own memory order (a channels-last copy keeps channels innermost).
    """
    N, C, H, W = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):
        nhwc = x.permute(0, 2, 3, 1).reshape(N, H // d, d, W // d, d, C).permute(0, 2, 4, 1, 3, 5)
        return nhwc.reshape(N * d * d, H // d, W // d, C).permute(0, 3, 1, 2)
    nchw = x.reshape(N, C, H // d, d, W // d, d).permute(0, 3, 5, 1, 2, 4)
    return nchw.reshape(N * d * d, C, H // d, W // d)


def _same_depthwise(x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    return F.conv2d(x, weight, None, 1, dilation * (weight.shape[-1] // 2), dilation, weight.shape[0])


class _SameDilatedDepthwise(torch.autograd.Function):
    """A stride-1 dilated depthwise conv with "same" padding, whose gradients avoid oneDNN's slow
    dilated kernels:
    - input gradient: the same conv of the output gradient with the kernel flipped (a forward conv);
    - weight gradient: the undilated conv of the d*d interleaved sub-images (space-to-batch), summed.
    Forward is the plain conv. Only x and the weight are kept for backward, as the plain conv keeps.
    The backward is made of differentiable ops, so double backward works too.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        return _same_depthwise(x, weight, dilation)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        d = ctx.dilation
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _same_depthwise(grad, weight.flip(2, 3), d)
        if ctx.needs_input_grad[1]:
            kernel = weight.shape[-1]
            # oneDNN's weight gradient for kernels above 3x3 is slow on small planes (5x5 on the 4x4
            # sub-images of an 8x8 plane: 12 ms, against 2.8 ms for the k*k dot products)
            if kernel > 3 and x.shape[2] * x.shape[3] <= 64:
                grad_w = _depthwise_weight_grad_by_taps(x, grad, kernel, d)
            else:
                grad_w = torch.nn.grad.conv2d_weight(_space_to_batch(x, d), weight.shape, _space_to_batch(grad, d),
                                                     padding=kernel // 2, groups=weight.shape[0])
        return grad_x, grad_w, None


def _depthwise_weight_grad_by_taps(x: torch.Tensor, grad: torch.Tensor, kernel: int, d: int) -> torch.Tensor:
    """The weight gradient of a "same" depthwise conv as k*k per-channel dot products of shifted inputs."""
    p, H, W = d * (kernel // 2), x.shape[2], x.shape[3]
    padded = F.pad(x, (p, p, p, p))
    taps = [(grad * padded[:, :, i * d:i * d + H, j * d:j * d + W]).sum((0, 2, 3))
            for i in range(kernel) for j in range(kernel)]
    return torch.stack(taps, 1).view(-1, 1, kernel, kernel)


class DilatedDepthwiseConv(nn.Conv2d):
    """A dilated depthwise conv (no bias) that trains several times faster on CPU with the same numbers.

    oneDNN runs a dilated depthwise conv's forward fast but its backward 10-60x slower than an undilated
    one's (docs/performance.md); in training it is computed from undilated convs:
    - stride = dilation d: the conv reads every d-th pixel only, so it is the undilated conv of x[..., ::d, ::d];
    - stride 1, "same" padding, sizes divisible by d: `_SameDilatedDepthwise`.
    Evaluation, export and other shapes run the plain conv: ONNX graphs and latency keys are unchanged.
    """

    def __init__(self, C: int, kernel: int, stride: int, padding: int, dilation: int):
        super().__init__(C, C, kernel, stride, padding, dilation=dilation, groups=C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # square by construction: one number each
        k, s, p, d = self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        if not (self.training and torch.is_grad_enabled() and d > 1 and k % 2 == 1):
            return super().forward(x)
        if s == d and p % d == 0:
            return F.conv2d(x[:, :, ::d, ::d], self.weight, None, 1, p // d, 1, self.groups)
        if s == 1 and p == d * (k // 2) and x.shape[2] % d == 0 and x.shape[3] % d == 0:
            return _SameDilatedDepthwise.apply(x, self.weight, d)
        return super().forward(x)


class DilConv(_ConvBNSequential):
    """ReLU, depthwise kxk (dilated), pointwise 1x1, BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            DilatedDepthwiseConv(C_in, kernel, stride, padding, dilation),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(_ConvBNSequential):
    """Two [ReLU, depthwise kxk, 1x1, BN] units; only the first depthwise conv carries the stride."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(*DilConv(C_in, C_in, kernel, stride, padding, 1, affine),
                         *DilConv(C_in, C_out, kernel, 1, padding, 1, affine))


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


# ---- Mobile ops of the DenseNAS / MobileNetV2 routing space (docs/methods.md: DenseNAS) ----

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
