"""Latency as a loss: the chained expected latency of a routing supernet (differentiable in its betas
and alphas) and the exact latency of a routed architecture, from one latency table (REFERENCE.md
section 6).

    layer cost   = sum over ops of softmax(alpha)_op * latency(op)         (skip costs 0)
    cost'(F)     = 0                                                       (the final 1x1 block)
    cost'(b)     = stack(b) + sum_{j in out(b)} softmax(beta_b)_j * (head(j <- b) + cost'(j))
    network      = fixed + cost'(0)

where head(F <- b) is the final 1x1 branch from block b and `fixed` is the stem, the classifier and
the runtime's per-call cost. With one-hot weights this is exactly the table's prediction for that
architecture (`exact`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hwnas.latency.keys import classifier_key, final_key, head_key, routed_arch_keys, routing_space_keys, stack_key, stem_keys
from hwnas.latency.table import LatencyTable
from hwnas.routed import RoutedArch
from hwnas.spaces.definition import RoutingSpace


class RoutingCost:
    """Latencies (ms) of every choice of a routing space, looked up once from `table`."""

    def __init__(self, space: RoutingSpace, table: LatencyTable, batch: int = 1):
        table.check_for(space.name, routing_space_keys(space, batch))
        self.space, self.table, self.batch = space, table, batch
        self.fixed = (sum(table.op_ms(k) for k in [*stem_keys(space, batch), classifier_key(space, batch)])
                      + table.scale * table.overhead_ms)
        self.head: dict[tuple[int, int], torch.Tensor] = {}  # (target, source) -> latency per head op
        self.stack: dict[int, torch.Tensor] = {}              # block -> latency per stack op
        self.final: dict[int, float] = {}                     # source -> final 1x1 branch
        for source, target in space.connections():
            if target == space.final_block:
                self.final[source] = table.op_ms(final_key(space, source, batch))
            else:
                self.head[target, source] = torch.tensor(
                    [table.op_ms(head_key(space, op, source, target, batch)) for op in space.head_ops])
        for block in range(space.num_blocks):
            if space.stack_layers[block]:
                self.stack[block] = torch.tensor(
                    [0.0 if op == "skip_connect" else table.op_ms(stack_key(space, op, block, batch))
                     for op in space.stack_ops])

    def edge_ms(self, source: int, target: int, head_weights: torch.Tensor | None = None,
                stack_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Latency of entering `target` from `source`: its head (or final branch) and its stack layers,
        each the weighted sum over its ops (weights: probabilities over head_ops / stack_ops)."""
        if target == self.space.final_block:
            return torch.tensor(self.final[source])
        cost = (head_weights * self.head[target, source]).sum()
        for weights in stack_weights or []:
            cost = cost + (weights * self.stack[target]).sum()
        return cost

    def expected(self, supernet) -> torch.Tensor:
        """The chained expected latency (ms) under the supernet's softmaxed betas and alphas."""
        space = self.space
        stack = {j: [F.softmax(a, dim=-1) for a in supernet.stack_alphas(j)] for j in range(1, space.num_blocks)}
        cost: dict[int, torch.Tensor] = {space.final_block: torch.zeros(())}
        for b in reversed(range(space.num_blocks)):
            probs = supernet.edge_probs(b)
            terms = []
            for k, j in enumerate(space.targets(b)):
                head = None if j == space.final_block else F.softmax(supernet.head_alphas(j, b), dim=-1)
                terms.append(probs[k] * (self.edge_ms(b, j, head, stack.get(j)) + cost[j]))
            cost[b] = sum(terms)
        return self.fixed + cost[0]

    def exact(self, arch: RoutedArch) -> float:
        """The table's latency of a derived architecture (what `hwnas lut predict` prints)."""
        return self.table.predict(k for _, k in routed_arch_keys(self.space, arch, self.batch))

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest latency any architecture of the space can have."""
        space, best = self.space, {}
        for pick in (min, max):
            reach = {0: self.fixed}
            for j in range(1, space.final_block + 1):
                options = []
                for i in space.sources(j):
                    if j == space.final_block:
                        options.append(reach[i] + self.final[i])
                        continue
                    layer = pick(self.stack[j].tolist()) * space.stack_layers[j] if j in self.stack else 0.0
                    options.append(reach[i] + pick(self.head[j, i].tolist()) + layer)
                reach[j] = pick(options)
            best[pick] = reach[space.final_block]
        return best[min], best[max]
