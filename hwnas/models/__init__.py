"""Final networks and their size (parameters, multiply-adds)."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module, exclude: tuple[str, ...] = ("auxiliary",)) -> int:
    """Trainable weights, excluding the auxiliary head and architecture parameters (as the papers count)."""
    arch = {id(p) for p in getattr(model, "arch_parameters", lambda: [])()}
    return sum(
        p.numel() for name, p in model.named_parameters()
        if id(p) not in arch and not any(tag in name for tag in exclude)
    )


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of conv and linear layers for one input of `input_shape` (C, H, W), eval mode."""
    total = 0

    def conv_hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() // output.shape[0] * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, inputs, output) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
