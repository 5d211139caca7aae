"""Does a runtime's file compute what the PyTorch module computes? Held to an absolute tolerance for
outputs up to 1 and a relative one above (max abs difference <= TOLERANCE * max(1, largest |output|)).

An untrained network's logits are of order 1e-2 (its classifier starts near zero and BN's running
statistics are 0 and 1), so agreement on them says little; `with_outputs_of_order_one` gives such a
network seeded random BN statistics and classifier weights first, so a wrong kernel shows."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hwnas.errors import HwnasError

TOLERANCE = 1e-4


class ParityError(HwnasError):
    pass


@torch.no_grad()
def with_outputs_of_order_one(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Seeded random BN running statistics and affine parameters, and a classifier scaled so the logits'
    spread is about 1 on unit-variance inputs."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            if module.affine:
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
    model.eval()
    linears = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and "auxiliary" not in name]
    if linears:
        classifier = linears[-1]
        classifier.weight.normal_(0, 1, generator=generator)
        spread = float(model(torch.randn(8, *input_shape[1:], generator=generator)).std())
        if spread > 0:
            classifier.weight.mul_(1 / spread)
    return model


def outputs_in_batches(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int | None) -> np.ndarray:
    """`run` over all of `x`, fed in chunks of the file's fixed batch (or whole when dynamic)."""
    step = batch or len(x)
    return np.concatenate([run(x[i:i + step]) for i in range(0, len(x) - len(x) % step, step)])


@torch.no_grad()
def torch_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).numpy()


def parity(run: Callable[[np.ndarray], np.ndarray], model: nn.Module, x: np.ndarray, batch: int | None, what: str,
           tolerance: float = TOLERANCE) -> dict[str, Any]:
    """`run` (a runtime's loaded file) against PyTorch on `x` (whole batches only): max absolute difference,
    the tolerance it is held to, the largest output, and top-1 agreement. ParityError beyond the tolerance."""
    usable = len(x) - len(x) % (batch or len(x))
    theirs = outputs_in_batches(run, x[:usable], batch)
    ours = torch_outputs(model, x[:usable])
    diff = float(np.abs(theirs - ours).max())
    bound = tolerance * max(1.0, float(np.abs(ours).max()))
    if not diff <= bound:
        raise ParityError(f"{what} disagrees with PyTorch: max abs difference {diff:.3g} > {bound:.3g}; the export "
                          "is not faithful (report this with the architecture)")
    return {"max_abs_diff": diff, "tolerance": bound, "images": usable, "max_abs_output": float(np.abs(ours).max()),
            "top1_agreement": float((theirs.argmax(axis=1) == ours.argmax(axis=1)).mean())}
