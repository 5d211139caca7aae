"""Hand-written autograd kernels under the cell ops: the same numbers as the plain modules, less
memory or much less CPU time in training (docs/performance.md).

- `PointwiseConvBN` / `conv_bn`: a training 1x1 conv + BN that keeps one activation instead of two;
- `ConvBNSequential`: a Sequential whose (conv, BN) pairs run through `conv_bn`;
- `DilatedDepthwiseConv` / `SameDilatedDepthwise`: a dilated depthwise conv whose backward avoids
  oneDNN's slow dilated kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PointwiseConvBN(torch.autograd.Function):
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
    """`bn(conv(z))`; a training 1x1 conv (stride 1, no bias) + plain BN runs as `PointwiseConvBN`."""
    pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and conv.bias is None
    # exact type: SyncBatchNorm and hwnas.distributed.GlobalBatchNorm must keep their own forward
    if not (pointwise and type(bn) is nn.BatchNorm2d and bn.training and torch.is_grad_enabled()):
        return bn(conv(z))
    return PointwiseConvBN.apply(z, conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                  count_training_batch(bn), bn.eps)


def count_training_batch(bn: nn.BatchNorm2d) -> float:
    """What nn.BatchNorm2d.forward does before a training batch: count it and return the running
    statistics' update factor (momentum, or 1/batches seen when momentum is None; unused without them)."""
    if not bn.track_running_stats:
        return 0.0
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


class ConvBNSequential(nn.Sequential):
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


class SameDilatedDepthwise(torch.autograd.Function):
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
    - stride 1, "same" padding, sizes divisible by d: `SameDilatedDepthwise`.
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
            return SameDilatedDepthwise.apply(x, self.weight, d)
        return super().forward(x)
