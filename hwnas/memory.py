"""Refuse a network too large for the machine before anything is made.

A network of absurd size (`init_channels` in the thousands) is not an error of its config's types, yet
building it asks the allocator for tens of gigabytes, and the operating system kills the process
without a word, leaving a half-made run folder. So a search or a training first builds its network on
PyTorch's meta device (shapes only, no memory), counts what training it would hold, and stops with one
line when that exceeds the memory the device has free.
"""

from __future__ import annotations

from typing import Callable

import psutil
import torch
from torch import nn

from hwnas.errors import ConfigError

# weights, their gradients and up to two optimizer states (SGD's momentum; Adam's two moments)
TENSORS_PER_WEIGHT = 4
BYTES_PER_VALUE = 4  # float32


def training_bytes(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> int:
    """About the memory that training the network `build()` makes on batches of `input_shape` holds: its
    weights with their gradients and optimizer states, and every layer's output kept for the backward
    pass, from one forward pass on the meta device."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build()
        weights = sum(p.numel() for p in model.parameters())
        outputs = [0]

        def count(_module, _inputs, output) -> None:
            tensors = output if isinstance(output, (tuple, list)) else [output]
            outputs[0] += sum(t.numel() for t in tensors if isinstance(t, torch.Tensor))

        hooks = [m.register_forward_hook(count) for m in model.modules() if not any(True for _ in m.children())]
        try:
            model.train()
            model(torch.empty(input_shape))
        except Exception:  # a supernet that must be told what to run first: its weights alone then
            outputs[0] = 0
        finally:
            for hook in hooks:
                hook.remove()
    return BYTES_PER_VALUE * (TENSORS_PER_WEIGHT * weights + outputs[0])


def free_bytes(device: str) -> int:
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return int(psutil.virtual_memory().available)


def require_memory(build: Callable[[], nn.Module], input_shape: tuple[int, ...], device: str, what: str,
                   smaller: str) -> None:
    """One line naming the need, what is free and what to lower, when training `build()` cannot fit."""
    need, free = training_bytes(build, input_shape), free_bytes(device)
    if need > free:
        raise ConfigError(f"training {what} on batches of {input_shape[0]} would need about {need / 2**30:.1f} GiB, "
                          f"more than the {free / 2**30:.1f} GiB free on {device}; lower {smaller}")
