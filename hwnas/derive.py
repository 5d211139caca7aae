"""Turning architecture weights into an architecture.

Cell spaces: the DARTS rule (REFERENCE.md section 1). Routing spaces (Viterbi) join later.
"""

from __future__ import annotations

from typing import Sequence

import torch

from hwnas.genotypes import Genotype, Pairs


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
