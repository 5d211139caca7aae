"""DARTS (Liu et al., 2019): softmax mixed ops, first- or second-order architecture gradients.

The supernet is the plain `CellSupernet` (softmax over each edge's alphas). What is DARTS's own
is the unrolled architecture gradient (docs/methods.md: DARTS cell space):

1. virtual step  w' = w - eta * (mu * buf + grad_w L_train(w, a) + wd * w)
2. backprop L_val(w', a): d_a and v = grad_w' L_val(w', a)
3. eps = 0.01 / ||v||, w+- = w +- eps * v: h = (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps)
4. grad_a = d_a - eta * h; restore w
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.methods import Batch
from hwnas.methods.cell_latency import CellLatencyOptions, CellMethod
from hwnas.supernets.cell import CELL_TYPES, CellSupernet

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DartsOptions(CellLatencyOptions):
    name: Literal["darts"] = "darts"
    unrolled: bool = False  # second-order architecture gradient


def _grads(loss: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def unrolled_arch_gradient(model: nn.Module, loss_fn: LossFn, arch_loss_fn: LossFn, train_batch: Batch,
                           val_batch: Batch, weight_optimizer: torch.optim.Optimizer, r: float = 0.01
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Set `.grad` of the architecture weights to the second-order DARTS gradient; returns L_val(w').

    The perturbation has norm `r` (eps = r / ||v||), 0.01 as published.
    """
    weights, alphas = model.weight_parameters(), model.arch_parameters()
    group = weight_optimizer.param_groups[0]
    eta, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
    backup = [w.detach().clone() for w in weights]

    # 1. virtual SGD step on the training batch
    grad_w = _grads(loss_fn(model, *train_batch)[0], weights)
    with torch.no_grad():
        for w, g in zip(weights, grad_w):
            buf = weight_optimizer.state.get(w, {}).get("momentum_buffer")
            step = g + wd * w + (mu * buf if buf is not None else 0.0)
            w.sub_(eta * step)

    # 2. validation loss at w'
    val_loss, val_logits = arch_loss_fn(model, *val_batch)
    grads = _grads(val_loss, alphas + weights)
    d_alpha, v = grads[: len(alphas)], grads[len(alphas):]

    # 3. Hessian-vector product by central differences around the original w
    eps = r / torch.cat([g.flatten() for g in v]).norm()
    grad_alpha_at = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for w, b, g in zip(weights, backup, v):
                w.copy_(b + sign * eps * g)
        grad_alpha_at.append(_grads(loss_fn(model, *train_batch)[0], alphas))
    with torch.no_grad():
        for w, b in zip(weights, backup):
            w.copy_(b)

    # 4. combine
    for a, d, gp, gm in zip(alphas, d_alpha, *grad_alpha_at):
        a.grad = d - eta * (gp - gm) / (2 * eps)
    return val_loss.detach(), val_logits.detach()


class Darts(CellMethod):
    name = "darts"
    Options = DartsOptions

    def build_supernet(self) -> CellSupernet:
        s = self.options.supernet
        return CellSupernet(s.init_channels, self.num_classes, s.layers, s.nodes, s.stem_multiplier, self.in_channels)

    def arch_backward(self, model, train_batch, val_batch, weight_optimizer):
        if not self.options.unrolled:
            return super().arch_backward(model, train_batch, val_batch, weight_optimizer)
        return unrolled_arch_gradient(model, self.loss, self.arch_loss, train_batch, val_batch, weight_optimizer)

    def arch_weights(self, model: CellSupernet) -> dict[str, list]:
        with torch.no_grad():
            return {kind: F.softmax(model.alphas[kind], dim=-1).cpu().tolist() for kind in CELL_TYPES}

