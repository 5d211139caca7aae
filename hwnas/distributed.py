"""Several processes under `torchrun`: each rank works on its shard of every batch, gradients are
averaged over ranks, rank 0 alone writes files.

Outside torchrun (or with one process) every function here is a no-op, so the loops call them
unconditionally. The final-training loop wraps its network in DistributedDataParallel. The search
loop cannot: an architecture step (unrolled second-order DARTS, Gumbel or two-op sampling) is not
the one-forward-one-backward pattern DDP's wrapper hooks into, so it averages the weight gradients
and then the architecture gradients with the same collective DDP uses (all-reduce, divided by the
number of ranks). Every rank seeds its random generator alike, so GDAS and DenseNAS sample the
same ops on every rank, as one process would for the whole global batch.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from hwnas.errors import HwnasError
from hwnas.ops.kernels import count_training_batch


def launched_ranks() -> int:
    """How many processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> torch.device:
    """Join torchrun's process group (gloo on CPU, nccl on GPUs); the device this rank computes on."""
    dev = torch.device(device)
    if launched_ranks() <= 1:
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks. A parameter no rank used keeps no gradient (the
    optimiser skips it, as in one process); one that only some ranks used counts zero on the others."""
    if not active():
        return
    params = list(params)
    if not params:
        return
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(used)
    grads = []
    for param, n in zip(params, used.tolist()):
        if n:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grads.append(param.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(chunk.view(grad.shape))


def mean_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each value averaged over ranks (epoch means of losses and accuracies over equal shards)."""
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / world_size()).tolist()


def sync_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (BN running statistics drift apart on shards)."""
    if not active():
        return
    for tensor in module.state_dict().values():
        if tensor.is_floating_point() or tensor.dtype in (torch.int64, torch.int32):
            dist.broadcast(tensor, 0)


def on_main(work: Callable[[], Any]) -> Any:
    """`work()` on rank 0 alone; its result, or the error it raised, reaches every rank (so a run directory
    refused on rank 0 stops all ranks with the same one-line message instead of leaving them waiting)."""
    if not active():
        return work()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", work())
        except HwnasError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, 0)
    status, value = box[0]
    if status == "error":
        raise HwnasError(value)
    return value


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is the all-reduce of the gradient: each rank's loss depends on
    every rank's share of the sum."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the global batch of all ranks, so a run on N processes
    normalises exactly as one process with the whole batch. torch's SyncBatchNorm does this on GPUs
    only; this is the same computation for the CPU (gloo): per-channel sums, all-reduced through
    autograd so the backward pass sees the other ranks' share too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        channels, shape = x.size(1), (1, x.size(1), 1, 1)
        count = torch.tensor([x.numel() // channels], dtype=x.dtype, device=x.device)
        sums = _SumOverRanks.apply(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        centred = x - mean.view(shape)  # two passes, as one process computes the variance
        var = _SumOverRanks.apply((centred * centred).sum(dim=(0, 2, 3))) / total
        if self.track_running_stats:
            with torch.no_grad():
                momentum = count_training_batch(self)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * total / (total - 1), momentum)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def use_global_batch_norm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for its global-batch form under torchrun (torch's SyncBatchNorm on GPUs)."""
    if not active():
        return module
    if any(p.is_cuda for p in module.parameters()):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.BatchNorm2d:
                swapped = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
                swapped.load_state_dict(child.state_dict())
                setattr(parent, name, swapped)
    return module


def check_agreement(value: Any, what: str) -> None:
    """Fail loudly if the ranks hold different `value`s (they must derive the same architecture)."""
    if not active():
        return
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values[1:]):
        raise HwnasError(f"the {world_size()} ranks disagree on the {what}; please report this as a bug")
