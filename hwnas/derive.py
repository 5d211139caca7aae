"""Turning architecture weights into an architecture.

Cell spaces: the DARTS rule (docs/methods.md: DARTS cell space). Routing spaces: Viterbi path selection
(docs/methods.md: DenseNAS) and its budget-constrained variant.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from hwnas.errors import HwnasError
from hwnas.archs.genotype import Genotype, Pairs
from hwnas.archs.routed import RoutedArch, RoutedBlock
from hwnas.spaces.definition import RoutingSpace

if TYPE_CHECKING:
    from hwnas.latency.cost import CellCost, RoutingCost


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


def budget_genotype(weights: dict[str, torch.Tensor], edge_primitives: dict[str, Sequence[Sequence[str]]], nodes: int,
                    cost: "CellCost", budget_ms: float, min_ms: float = 0.0, skip_limit: int | None = None,
                    resolution: int = 500) -> Genotype:
    """The highest-scoring genotype whose table latency lies in [min_ms, budget_ms], else the highest-scoring
    one under budget_ms. Score: sum of log weight(op) over the kept (edge, op) pairs, so with a loose budget
    this is the DARTS rule (per node the two edges with the strongest op, that op on each). With
    `skip_limit`, at most that many skip-connects in the normal cell (P-DARTS's rule).

    Dynamic programming over the 2 x nodes (cell type, node) choices, with the latency left under the
    budget as the resource in `resolution` buckets; each choice's latency is rounded up to whole buckets,
    so a genotype the DP accepts never exceeds the budget, and the true latency of each state is kept."""
    spare = budget_ms - cost.fixed
    items = [_node_options(weights[kind].detach().cpu(), edge_primitives[kind], kind, node, cost)
             for kind in ("normal", "reduce") for node in range(nodes)]
    low = cost.fixed + sum(min(ms for ms, *_ in options) for options in items)
    if low > budget_ms:
        raise HwnasError(f"no genotype fits a budget of {budget_ms:g} ms; the smallest feasible latency of these "
                         f"candidates with this table is {low:.3f} ms")
    width = spare / resolution
    skip_states = 1 if skip_limit is None else skip_limit + 1
    score = np.full((skip_states, resolution + 1), -np.inf)
    latency = np.zeros_like(score)
    score[0, 0] = 0.0
    back = []
    for options in items:
        new_score, new_latency = np.full_like(score, -np.inf), np.zeros_like(latency)
        choice = np.full(score.shape, -1)
        for o, (ms, option_score, skips, _) in enumerate(options):
            d = math.ceil(ms / width - 1e-9)
            skips = skips if skip_limit is not None else 0
            if d > resolution or skips >= skip_states:
                continue
            for sk in range(skip_states - skips):
                candidate = score[sk, : resolution + 1 - d] + option_score
                target = new_score[sk + skips, d:]
                better = candidate > target
                target[better] = candidate[better]
                new_latency[sk + skips, d:][better] = latency[sk, : resolution + 1 - d][better] + ms
                choice[sk + skips, d:][better] = o
        score, latency = new_score, new_latency
        back.append(choice)
    reached = np.isfinite(score)
    in_window = reached & (cost.fixed + latency >= min_ms)
    pool = in_window if in_window.any() else reached
    sk, b = np.unravel_index(np.argmax(np.where(pool, score, -np.inf)), score.shape)
    chosen = []
    for options, choice in zip(reversed(items), reversed(back)):
        ms, _, skips, pairs = options[choice[sk, b]]
        chosen.append(pairs)
        sk -= skips if skip_limit is not None else 0
        b -= math.ceil(ms / width - 1e-9)
    chosen.reverse()
    concat = tuple(range(2, 2 + nodes))
    normal = tuple(pair for pairs in chosen[:nodes] for pair in pairs)
    reduce = tuple(pair for pairs in chosen[nodes:] for pair in pairs)
    return Genotype(normal, concat, reduce, concat)


def _node_options(weights: torch.Tensor, edge_primitives: Sequence[Sequence[str]], kind: str, node: int,
                  cost: "CellCost") -> list[tuple[float, float, int, tuple]]:
    """(latency, score, normal-cell skips, ((op, input), (op, input))) of every way node `node` can keep two
    distinct inputs with one non-`none` op each; the stronger pair first (ties: the lower input)."""
    first_edge = sum(2 + n for n in range(node))
    singles = []
    for state in range(node + 2):
        for k, name in enumerate(edge_primitives[first_edge + state]):
            w = float(weights[first_edge + state, k])
            if name != "none" and w > 0:
                singles.append((w, state, name, cost.op_ms(kind, state, name)))
    options = []
    for a, b in itertools.combinations(singles, 2):
        if a[1] == b[1]:
            continue
        first, second = sorted((a, b), key=lambda x: (-x[0], x[1]))
        skips = sum(x[2] == "skip_connect" for x in (a, b)) if kind == "normal" else 0
        options.append((a[3] + b[3], math.log(a[0]) + math.log(b[0]), skips,
                        ((first[2], first[1]), (second[2], second[1]))))
    return options


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
    alphas and each stack layer its argmax, layers whose best op is skip dropped.

    On an exact tie the nearest source wins, as in the DenseNAS release (it scans sources from the
    nearest and keeps the first maximum); max() keeps the first maximum, so scan them the same way."""
    logp, back = {0: 0.0}, {}
    for k in range(1, space.final_block + 1):
        back[k] = max(reversed(space.sources(k)),
                      key=lambda a: logp[a] + _log(weights.edges[a][space.targets(a).index(k)]))
        a = back[k]
        logp[k] = logp[a] + _log(weights.edges[a][space.targets(a).index(k)])
    path = [space.final_block]
    while path[-1] != 0:
        path.append(back[path[-1]])
    path.reverse()
    return RoutedArch(space.name, tuple(_block(space, weights, a, k) for a, k in zip(path, path[1:-1])))


def draw(space: RoutingSpace, weights: RoutingWeights, rng: random.Random) -> RoutedArch:
    """One architecture drawn from the search's distribution: from block 0, each next block by the betas of
    the block left, its head op by that branch's alphas, each stack op by its layer's (skip dropped)."""
    blocks, source = [], 0
    while True:
        targets = space.targets(source)
        target = targets[_pick(rng, weights.edges[source])]
        if target == space.final_block:
            return RoutedArch(space.name, tuple(blocks))
        head = _pick(rng, weights.heads[target, source])
        stack = [_pick(rng, p) for p in weights.stacks.get(target, [])]
        blocks.append(_block(space, weights, source, target, head, stack))
        source = target


def _pick(rng: random.Random, probs: Sequence[float]) -> int:
    return rng.choices(range(len(probs)), weights=probs)[0]


def _pareto(options: list[tuple[float, float, tuple]]) -> list[tuple[float, float, tuple]]:
    """Options (latency, score, choice) that no other option beats on both latency and score."""
    front, best = [], -math.inf
    for option in sorted(options, key=lambda o: (o[0], -o[1])):
        if option[1] > best:
            front.append(option)
            best = option[1]
    return front


def _best_per_bucket(options: list[tuple[float, float, tuple]], width: float) -> list[tuple[float, float, tuple]]:
    """The best-scoring option in each latency bucket of `width`."""
    best: dict[int, tuple[float, float, tuple]] = {}
    for option in options:
        bucket = int(option[0] / width)
        if bucket not in best or option[1] > best[bucket][1]:
            best[bucket] = option
    return list(best.values())


def _edge_options(space: RoutingSpace, weights: RoutingWeights, cost: "RoutingCost", source: int,
                  target: int, prune=_pareto) -> list[tuple[float, float, tuple]]:
    """(latency, score, (head, stack ops)) of the ways to enter `target` from `source`; the score of an op
    choice is sum of log(p(op) / p(most probable op)) over its layers: 0 for the argmax ops. `prune`
    thins the combinations after each layer (to a Pareto front when only an upper bound matters)."""
    if target == space.final_block:
        return [(cost.final[source], 0.0, ())]
    head_p = weights.heads[target, source]
    options = [(float(cost.head[target, source][h]), _log(head_p[h]) - _log(max(head_p)), (h,))
               for h in range(len(space.head_ops))]
    options = prune(options)
    for layer_p in weights.stacks.get(target, []):
        layer = [(float(cost.stack[target][o]), _log(layer_p[o]) - _log(max(layer_p))) for o in range(len(layer_p))]
        options = prune([(lat + l_lat, score + l_score, choice + (o,))
                           for lat, score, choice in options for o, (l_lat, l_score) in enumerate(layer)])
    return options


def budget_viterbi(space: RoutingSpace, weights: RoutingWeights, cost: "RoutingCost", budget_ms: float,
                   min_ms: float = 0.0, resolution: int = 500) -> RoutedArch:
    """The most probable architecture whose table latency lies in [min_ms, budget_ms], else the most
    probable one under budget_ms. Score = log P(path) under the betas + the op-choice score of
    `_edge_options`, so with a loose budget this is the Viterbi path with argmax ops.

    Dynamic programming over blocks with latency as a resource: per block, for each latency bucket
    of width budget_ms / resolution, the best-scoring way to reach it (its true latency kept, so the
    budget is never exceeded); branches that cannot reach the final block within the budget are cut.
    Ties go to the nearest sources, as in `viterbi`, so a loose budget gives its answer."""
    low, _ = cost.bounds()
    if budget_ms < low:
        raise HwnasError(f"no architecture of {space.name} fits a budget of {budget_ms:g} ms; the smallest feasible "
                         f"latency with this table is {low:.3f} ms")
    rest = _min_latency_to_final(space, cost)
    width = budget_ms / resolution
    # only an upper bound: each edge's Pareto front suffices; a window needs options at every latency
    prune = _pareto if min_ms <= 0 else (lambda options: _best_per_bucket(options, width))
    labels: dict[int, dict[int, tuple[float, float, tuple]]] = {0: {0: (cost.fixed, 0.0, ())}}
    for k in range(1, space.final_block + 1):
        best: dict[int, tuple[float, float, tuple]] = {}
        for a in reversed(space.sources(k)):  # nearest first: a later source must score higher to win
            edge_score = _log(weights.edges[a][space.targets(a).index(k)])
            options = _edge_options(space, weights, cost, a, k, prune)
            for lat, score, steps in labels[a].values():
                for e_lat, e_score, choice in options:
                    new_lat = lat + e_lat
                    if new_lat + rest[k] > budget_ms:
                        continue
                    bucket = int(new_lat / width)
                    new_score = score + edge_score + e_score
                    if bucket not in best or new_score > best[bucket][1]:
                        best[bucket] = (new_lat, new_score, steps + ((a, k, choice),))
        labels[k] = best
    final = list(labels[space.final_block].values())
    in_window = [label for label in final if label[0] >= min_ms]
    # on a tie the path whose sources, read back from the output, are nearest: viterbi's backtracking
    _, _, steps = max(in_window or final, key=lambda label: (label[1], [a for a, _, _ in reversed(label[2])]))
    return RoutedArch(space.name, tuple(_block(space, weights, a, k, choice[0], choice[1:])
                                        for a, k, choice in steps[:-1]))


def _min_latency_to_final(space: RoutingSpace, cost: "RoutingCost") -> dict[int, float]:
    """The least latency still to come after reaching block k (its stack included) up to the output."""
    rest = {space.final_block: 0.0}
    for b in reversed(range(space.num_blocks)):
        options = []
        for j in space.targets(b):
            if j == space.final_block:
                options.append(cost.final[b] + rest[j])
            else:
                stack = min(cost.stack[j].tolist()) * space.stack_layers[j] if j in cost.stack else 0.0
                options.append(min(cost.head[j, b].tolist()) + stack + rest[j])
        rest[b] = min(options)
    # rest[k] is counted from block k's output; a label entering k already paid k's head and stack
    return rest
