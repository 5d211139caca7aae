"""Networks of a space ranked by their accuracy with a supernet's shared weights.

A supernet holds a trained weight for every op of every network of its space, so one of its networks can
be tested without training it: run only its ops, after its batch norms have seen its own activations.
The batch-norm statistics a search leaves are those of the mixtures it trained (every routing path at
once, ops drawn at random), not of any one network, so they are measured again for each network on a
few training batches before it is tested (as single-path one-shot searches do: SPOS, OFA).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def shared_weight_accuracy(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                           calibration: Sequence[Batch], evaluation: Sequence[Batch]) -> float:
    """Accuracy of `forward` (one network through `model`'s weights) on `evaluation`, its batch-norm
    statistics measured afresh on `calibration`; the model's own statistics are left as they were."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    was_training = model.training
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batches
        model.train()
        for x, _ in calibration:
            forward(x)
        model.eval()
        correct = total = 0
        for x, y in evaluation:
            correct += (forward(x).argmax(dim=1) == y).sum().item()
            total += len(y)
    finally:
        for m, (momentum, mean, var, count) in zip(norms, kept):
            m.momentum = momentum
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
        model.train(was_training)
    return correct / total
