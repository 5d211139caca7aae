"""What every supernet gives the search loop.

A supernet is the network a search trains: every candidate of its space at once, mixed by
architecture weights it owns. The loop needs four things of it:

- `arch_parameters()`: the architecture weights (DARTS's alphas, PC-DARTS's edge betas, DenseNAS's
  routing betas and op alphas), stepped by the architecture optimizer on the architecture split;
- `weight_parameters()`: everything else, stepped by the weight optimizer on the weight split;
- `forward(x)`: the logits, mixed as the supernet's weights (and, for DenseNAS, the ops its method
  sampled for this step) say;
- `state_dict()`: both kinds of weights, so a checkpoint holds the whole search.

Architecture weights live in the `nn.ParameterDict`s named by `arch_weight_dicts`, so which
parameter is which is declared once, here, and not read off parameter names.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn


class Supernet(nn.Module):
    # the attributes holding the architecture weights, in the order the architecture optimizer sees them
    arch_weight_dicts: ClassVar[tuple[str, ...]] = ("alphas",)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for name in self.arch_weight_dicts for p in getattr(self, name).values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]
