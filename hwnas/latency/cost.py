"""Latency as a loss: the chained expected latency of a routing supernet (differentiable in its betas
and alphas) and the exact latency of a routed architecture, from one latency table (docs/methods.md:
DenseNAS).

    layer cost   = sum over ops of softmax(alpha)_op * latency(op)         (skip costs 0)
    cost'(F)     = 0                                                       (the final 1x1 block)
    cost'(b)     = stack(b) + sum_{j in out(b)} softmax(beta_b)_j * (head(j <- b) + cost'(j))
    network      = fixed + cost'(0)

where head(F <- b) is the final 1x1 branch from block b and `fixed` is the stem, the classifier and
the runtime's per-call cost. With one-hot weights this is exactly the table's prediction for that
architecture (`exact`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hwnas.archs.genotype import Genotype
from hwnas.latency.keys import (cell_edge_keys, cell_fixed_keys, cell_space_keys, classifier_key, final_key,
                                genotype_keys, head_key, routed_arch_keys, routing_space_keys, stack_key, stem_keys)
from hwnas.latency.table import LatencyTable
from hwnas.archs.routed import RoutedArch
from hwnas.spaces.definition import CellSpace, RoutingSpace


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


class CellCost:
    """Latencies of the final cell network of a cell space (the table's C, cells and input size), per
    choice a genotype makes: an op on an edge (node j <- state i) of the normal or the reduction cell,
    summed over every cell of that type.

        exact(genotype) = fixed + sum over the genotype's (op, input) pairs of edge_ms
        expected        = fixed + sum_types sum_edges 2 / (j + 2) * sum_ops p(op) * edge_ms(op)

    where p is the edge's softmax renormalised over the ops a genotype may keep (not `none`) and
    2 / (j + 2) the share of node j's incoming edges a genotype keeps. `fixed` holds the stem, the
    cells' preprocessing ops, the classifier and the runtime's per-call cost.
    """

    def __init__(self, space: CellSpace, table: LatencyTable, batch: int = 1):
        table.check_for(space.name, cell_space_keys(space, batch))
        self.space, self.table, self.batch = space, table, batch
        self.fixed = sum(table.op_ms(k) for k in cell_fixed_keys(space, batch)) + table.scale * table.overhead_ms
        self._ms: dict[tuple[str, int, str], float] = {}
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def op_ms(self, kind: str, state: int, op: str) -> float:
        """`op` on an edge from `state` in every `kind` (normal / reduce) cell; `none` costs nothing."""
        if (kind, state, op) not in self._ms:
            keys = cell_edge_keys(self.space, kind == "reduce", state, op, self.batch)
            self._ms[kind, state, op] = sum(self.table.op_ms(k) for k in keys)
        return self._ms[kind, state, op]

    def edges(self) -> list[tuple[int, int]]:
        """(node, input state) of each edge, in the supernet's edge order."""
        return [(node, state) for node in range(self.space.nodes) for state in range(node + 2)]

    def expected(self, probs: dict[str, torch.Tensor], edge_primitives: dict[str, list]) -> torch.Tensor:
        """Expected latency (ms) under softmaxed architecture weights (edges x candidates per cell type)."""
        total = torch.tensor(self.fixed)
        for kind, weights in probs.items():
            keep, ms, share = self._edge_table(kind, edge_primitives[kind])
            p = weights * keep
            total = total + (share * (p * ms).sum(-1) / p.sum(-1)).sum()
        return total

    def _edge_table(self, kind: str, primitives: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(edges x candidates) keep-mask (not `none`) and latencies, and each edge's kept share 2 / (j + 2);
        built once per candidate list (P-DARTS changes it between stages), as every architecture step asks."""
        key = (kind, tuple(map(tuple, primitives)))
        if key not in self._tables:
            edges = self.edges()
            keep = torch.tensor([[name != "none" for name in names] for names in primitives], dtype=torch.float32)
            ms = torch.tensor([[self.op_ms(kind, state, name) for name in names]
                               for names, (_, state) in zip(primitives, edges)])
            share = torch.tensor([2.0 / (node + 2) for node, _ in edges])
            self._tables[key] = (keep, ms, share)
        return self._tables[key]

    def exact(self, genotype: Genotype) -> float:
        return self.table.predict(k for _, k in genotype_keys(self.space, genotype, self.batch))

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest latency a genotype of the space's primitives can have."""
        ops = [op for op in self.space.primitives if op != "none"]
        result = []
        for pick in (min, max):
            total = self.fixed
            for kind in ("normal", "reduce"):
                for node in range(self.space.nodes):
                    per_input = sorted(pick(self.op_ms(kind, s, op) for op in ops) for s in range(node + 2))
                    total += sum(per_input[:2] if pick is min else per_input[-2:])
            result.append(total)
        return result[0], result[1]


class BudgetMultiplier:
    """The Lagrange multiplier of the constraint E[LAT] = target, learnt by dual ascent: the loss adds
    mu * (LAT / target - 1), and after each architecture step mu += dual_lr * (LAT / target - 1). It grows
    while the supernet is slower than the target and turns negative while it is faster.

    The target is the budget B, or, with `anneal_epochs` n > 0, a target that starts at the expected
    latency L0 of the supernet at its first architecture step and falls linearly to B over the first n
    architecture epochs: B + (L0 - B) * max(0, 1 - (k + 1) / n) in architecture epoch k. Aimed at B from
    the start, a supernet far slower than its budget drives mu so high that the latency term outweighs
    the accuracy term: every choice falls to the cheapest op, and mu's own momentum then carries the
    expected latency far below B. A falling target keeps mu near the value that holds the latency
    where the target is, so the accuracy term keeps its say."""

    def __init__(self, budget_ms: float, dual_lr: float, anneal_epochs: int = 0):
        self.budget_ms, self.dual_lr, self.anneal_epochs = budget_ms, dual_lr, anneal_epochs
        self.mu = 0.0
        self.start_ms: float | None = None  # the expected latency at the first architecture step
        self.arch_epoch = 0

    def begin_arch_epoch(self, arch_epoch: int) -> None:
        """Architecture epoch `arch_epoch` (0 for the first one with architecture steps) starts."""
        self.arch_epoch = arch_epoch

    @property
    def target_ms(self) -> float:
        if not self.anneal_epochs or self.start_ms is None or self.start_ms <= self.budget_ms:
            return self.budget_ms
        remaining = max(0.0, 1.0 - (self.arch_epoch + 1) / self.anneal_epochs)
        return self.budget_ms + (self.start_ms - self.budget_ms) * remaining

    def penalty(self, latency: torch.Tensor) -> torch.Tensor:
        if self.start_ms is None:
            self.start_ms = float(latency.detach())
        return self.mu * (latency / self.target_ms - 1)

    def update(self, latency_ms: float) -> None:
        self.mu += self.dual_lr * (latency_ms / self.target_ms - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"mu": self.mu, "start_ms": self.start_ms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mu = float(state.get("mu", 0.0))
        start = state.get("start_ms")
        self.start_ms = None if start is None else float(start)

