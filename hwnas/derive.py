"""Turning architecture weights into an architecture.

Cell spaces: the DARTS rule (REFERENCE.md section 1). Routing spaces: Viterbi path selection
(REFERENCE.md section 6) and its budget-constrained variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from hwnas.errors import HwnasError
from hwnas.genotypes import Genotype, Pairs
from hwnas.routed import RoutedArch, RoutedBlock
from hwnas.spaces.definition import RoutingSpace

if TYPE_CHECKING:
    from hwnas.latency.cost import RoutingCost


def derive_cell(weights: torch.Tensor, edge_primitives: Sequence[Sequence[str]], nodes: int) -> Pairs:
    """DARTS rule: per node keep the 2 incoming edges whose strongest non-`none` weight is largest,
    and on each the strongest non-`none` op; strongest edge first.

    `weights` is (edges x candidates); a method that weighs edges too (PC-DARTS) passes the
    product of op and edge weights, which ranks edges by both and leaves each edge's op choice alone.
    """
    weights = weights.detach().cpu()
    pairs: list[tuple[str, int]] = []
    edge = 0
    for node in range(nodes):
        best = []  # (strength, op name, input) per incoming edge
        for src in range(2 + node):
            candidates = [(float(weights[edge, k]), name)
                          for k, name in enumerate(edge_primitives[edge]) if name != "none"]
            strength, name = max(candidates, key=lambda c: c[0])
            best.append((strength, name, src))
            edge += 1
        # sorted() is stable: ties keep the lower input first, as in the DARTS release
        for strength, name, src in sorted(best, key=lambda b: -b[0])[:2]:
            pairs.append((name, src))
    return tuple(pairs)


def derive_genotype(weights: dict[str, torch.Tensor], edge_primitives: dict[str, Sequence[Sequence[str]]],
                    nodes: int) -> Genotype:
    concat = tuple(range(2, 2 + nodes))
    return Genotype(
        derive_cell(weights["normal"], edge_primitives["normal"], nodes), concat,
        derive_cell(weights["reduce"], edge_primitives["reduce"], nodes), concat,
    )


# ---- routing spaces ----

@dataclass(frozen=True)
class RoutingWeights:
    """Softmaxed architecture weights of a routing supernet, as plain numbers."""

    edges: dict[int, list[float]]               # block -> probabilities over space.targets(block)
    heads: dict[tuple[int, int], list[float]]   # (target, source) -> probabilities over space.head_ops
    stacks: dict[int, list[list[float]]]        # block -> per stack layer, probabilities over space.stack_ops


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def _argmax(probs: Sequence[float]) -> int:
    return max(range(len(probs)), key=lambda i: probs[i])


def _block(space: RoutingSpace, weights: RoutingWeights, source: int, target: int,
           head: int | None = None, stack: Sequence[int] | None = None) -> RoutedBlock:
    head = _argmax(weights.heads[target, source]) if head is None else head
    stack = [_argmax(p) for p in weights.stacks.get(target, [])] if stack is None else stack
    kept = tuple(space.stack_ops[i] for i in stack if space.stack_ops[i] != "skip_connect")
    return RoutedBlock(target, space.head_ops[head], kept)


def viterbi(space: RoutingSpace, weights: RoutingWeights) -> RoutedArch:
    """P(block 0) = 1; P(k) = max over sources a of P(a) * softmax(beta_a)[a -> k], with back-pointers;
    backtrack from the final 1x1 block. On the path each head op is the argmax of the chosen branch's
    alphas and each stack layer its argmax, layers whose best op is skip dropped."""
    logp, back = {0: 0.0}, {}
    for k in range(1, space.final_block + 1):
        back[k] = max(space.sources(k), key=lambda a: logp[a] + _log(weights.edges[a][space.targets(a).index(k)]))
        a = back[k]
        logp[k] = logp[a] + _log(weights.edges[a][space.targets(a).index(k)])
    path = [space.final_block]
    while path[-1] != 0:
        path.append(back[path[-1]])
    path.reverse()
    return RoutedArch(space.name, tuple(_block(space, weights, a, k) for a, k in zip(path, path[1:-1])))


def _pareto(options: list[tuple[float, float, tuple]]) -> list[tuple[float, float, tuple]]:
    """Options (latency, score, choice) that no other option beats on both latency and score."""
    front, best = [], -math.inf
    for option in sorted(options, key=lambda o: (o[0], -o[1])):
        if option[1] > best:
            front.append(option)
            best = option[1]
    return front


def _edge_options(space: RoutingSpace, weights: RoutingWeights, cost: "RoutingCost", source: int,
                  target: int) -> list[tuple[float, float, tuple]]:
    """(latency, score, (head, stack ops)) of the ways to enter `target` from `source`; the score of an op
    choice is sum of log(p(op) / p(most probable op)) over its layers: 0 for the argmax ops."""
    if target == space.final_block:
        return [(cost.final[source], 0.0, ())]
    head_p = weights.heads[target, source]
    options = [(float(cost.head[target, source][h]), _log(head_p[h]) - _log(max(head_p)), (h,))
               for h in range(len(space.head_ops))]
    options = _pareto(options)
    for layer_p in weights.stacks.get(target, []):
        layer = [(float(cost.stack[target][o]), _log(layer_p[o]) - _log(max(layer_p))) for o in range(len(layer_p))]
        options = _pareto([(lat + l_lat, score + l_score, choice + (o,))
                           for lat, score, choice in options for o, (l_lat, l_score) in enumerate(layer)])
    return options


def budget_viterbi(space: RoutingSpace, weights: RoutingWeights, cost: "RoutingCost", budget_ms: float) -> RoutedArch:
    """The most probable architecture whose table latency is at most `budget_ms`: score = log P(path)
    under the betas + the op-choice score of `_edge_options`, so without a binding budget this is the
    Viterbi path with argmax ops. Exact: dynamic programming over blocks keeping, per block, every
    (latency, score) label that no other label beats on both."""
    labels: dict[int, list[tuple[float, float, tuple]]] = {0: [(cost.fixed, 0.0, ())]}
    for k in range(1, space.final_block + 1):
        candidates = []
        for a in space.sources(k):
            edge_score = _log(weights.edges[a][space.targets(a).index(k)])
            for lat, score, steps in labels[a]:
                for e_lat, e_score, choice in _edge_options(space, weights, cost, a, k):
                    if lat + e_lat <= budget_ms:
                        candidates.append((lat + e_lat, score + edge_score + e_score, steps + ((a, k, choice),)))
        labels[k] = _pareto(candidates)
    if not labels[space.final_block]:
        low, _ = cost.bounds()
        raise HwnasError(f"no architecture of {space.name} fits a budget of {budget_ms:g} ms; the smallest feasible "
                         f"latency with this table is {low:.3f} ms")
    _, _, steps = max(labels[space.final_block], key=lambda label: label[1])
    return RoutedArch(space.name, tuple(_block(space, weights, a, k, choice[0], choice[1:])
                                        for a, k, choice in steps[:-1]))
