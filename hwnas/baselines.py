"""Baselines a search has to beat, drawn from the searched space and priced by the same latency table.

- **Random at a latency**: architectures drawn uniformly among all those of a routing space whose
  predicted latency lies within +-tolerance of a target. Uniform over architectures, not over random
  walks: a walk favours short paths, so it would rarely land at a high target and would compare the
  search against a biased sample. The architectures are counted per latency bin by dynamic programming
  over the blocks (the table's latency is a sum over the path's choices), then one is drawn backwards
  from the final block, each choice weighted by the number of completions it leaves.
- **Hand-designed (MobileNetV2-like)**: every layer an MBConv k3 with expansion 6, the same number of
  stack layers in every block that has them, along a path through the space. The family spans the
  space's latency range by its depth (stack layers) and by the path (which widths it visits); at a
  target latency the member within the tolerance with the most layers is taken (MobileNetV2's many thin
  layers), else the member nearest the target.
- **Random cells**: genotypes of a cell space with uniform ops and inputs, optionally kept only within
  a latency window (rejection sampling: cell latencies vary little).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwnas.errors import ArchitectureError, HwnasError
from hwnas.archs.genotype import Genotype
from hwnas.latency.cost import CellCost, RoutingCost
from hwnas.latency.networks import sample_arch
from hwnas.archs.routed import RoutedArch, RoutedBlock
from hwnas.spaces.definition import CellSpace, RoutingSpace, load_space

TOLERANCE = 0.03
HAND_OP = "mbconv_k3_t6"
BINS = 4000  # latency bins between 0 and the window's top: ~0.03% of the target each


@dataclass(frozen=True)
class Choice:
    """How a path enters a block: its head op and stack ops, and what they cost (ms)."""

    head: str
    stack: tuple[str, ...]
    ms: float


def edge_choices(space: RoutingSpace, cost: RoutingCost, source: int, target: int) -> list[Choice]:
    """Every distinct way to enter `target` from `source` (skip layers dropped, so a block with L stack
    layers keeps 0 .. L ops in order)."""
    if target == space.final_block:
        return [Choice("", (), cost.final[source])]
    ops = [op for op in space.stack_ops if op != "skip_connect"]
    stack_ms = ({op: float(cost.stack[target][space.stack_ops.index(op)]) for op in ops}
                if space.stack_layers[target] else {})
    stacks = [seq for n in range(space.stack_layers[target] + 1) for seq in itertools.product(ops, repeat=n)]
    choices = []
    for h, head in enumerate(space.head_ops):
        head_ms = float(cost.head[target, source][h])
        choices += [Choice(head, seq, head_ms + sum(stack_ms[op] for op in seq)) for seq in stacks]
    return choices


class RoutedArchCounter:
    """Architectures of a routing space counted by (last block, latency bin), up to `top_ms`."""

    def __init__(self, space: RoutingSpace, cost: RoutingCost, top_ms: float, bins: int = BINS):
        self.space, self.cost, self.width = space, cost, top_ms / bins
        self.bins = bins + 1
        self.choices = {(s, t): edge_choices(space, cost, s, t) for s, t in space.connections()}
        self.choice_bins = {edge: np.array([self._bin(c.ms) for c in options])
                            for edge, options in self.choices.items()}
        self.counts = {0: np.zeros(self.bins)}
        start = self._bin(cost.fixed)
        if start < self.bins:
            self.counts[0][start] = 1.0
        for target in range(1, space.final_block + 1):
            total = np.zeros(self.bins)
            for source in space.sources(target):
                hist = np.bincount(self.choice_bins[source, target], minlength=self.bins)[:self.bins]
                total += np.convolve(self.counts[source], hist)[:self.bins]
            self.counts[target] = total

    def _bin(self, ms: float) -> int:
        return int(round(ms / self.width))

    def in_window(self, low_ms: float, high_ms: float) -> float:
        """How many architectures the bins within [low, high] hold."""
        return float(self.counts[self.space.final_block][self._bin(low_ms):self._bin(high_ms) + 1].sum())

    def draw(self, low_ms: float, high_ms: float, rng: random.Random) -> RoutedArch:
        space, final = self.space, self.space.final_block
        window = self.counts[final][self._bin(low_ms):self._bin(high_ms) + 1]
        if window.sum() <= 0:
            raise ArchitectureError(f"no architecture of {space.name} has a predicted latency within "
                                    f"{low_ms:.4f} .. {high_ms:.4f} ms")
        remaining = self._bin(low_ms) + _weighted(rng, window)
        blocks, target = [], final
        while target:
            options = []  # (source, choice index, completions)
            for source in space.sources(target):
                before = remaining - self.choice_bins[source, target]
                ok = before >= 0
                weights = np.where(ok, self.counts[source][np.where(ok, before, 0)], 0.0)
                options += [(source, i, w) for i, w in enumerate(weights) if w > 0]
            source, index, _ = options[_weighted(rng, np.array([w for _, _, w in options]))]
            choice = self.choices[source, target][index]
            if target != final:
                blocks.append(RoutedBlock(target, choice.head, choice.stack))
            remaining -= self.choice_bins[source, target][index]
            target = source
        return RoutedArch(space.name, tuple(reversed(blocks)))


def _weighted(rng: random.Random, weights: np.ndarray) -> int:
    """An index drawn with probability proportional to `weights` (counts can exceed 2**63)."""
    cumulative = np.cumsum(weights / weights.sum())
    return min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(weights) - 1)


def window(target_ms: float, tolerance: float = TOLERANCE, under: bool = False) -> tuple[float, float]:
    """target +-tolerance, or with `under` [target * (1 - tolerance), target]: the window a budget
    search derives its network in (`budget_slack`), for a comparison at the same latency."""
    if not target_ms > 0 or not 0 <= tolerance < 1:
        raise ArchitectureError(f"a target latency must be positive and the tolerance in [0, 1); got "
                                f"{target_ms} ms +-{tolerance}")
    return target_ms * (1 - tolerance), target_ms * (1 if under else 1 + tolerance)


def random_routed_archs(space: RoutingSpace, cost: RoutingCost, target_ms: float, count: int, seed: int = 0,
                        tolerance: float = TOLERANCE, under: bool = False) -> list[RoutedArch]:
    """`count` distinct architectures drawn uniformly among those predicted within the window."""
    low, high = window(target_ms, tolerance, under)
    counter = RoutedArchCounter(space, cost, high * 1.01)
    available = counter.in_window(low, high)
    if available < count:
        raise ArchitectureError(f"{space.name} has about {available:.0f} architectures within {low:.4f} .. "
                                f"{high:.4f} ms; fewer than the {count} asked for (widen the tolerance)")
    rng, found = random.Random(seed), []
    for _ in range(100 * count):
        arch = counter.draw(low, high, rng)
        # bins round each choice's latency: keep only architectures truly inside the window
        if low <= cost.exact(arch) <= high and arch not in found:
            found.append(arch)
            if len(found) == count:
                return found
    raise ArchitectureError(f"drew only {len(found)} distinct architectures within {low:.4f} .. {high:.4f} ms")


def space_paths(space: RoutingSpace) -> list[tuple[int, ...]]:
    """Every path from block 0 to a block that feeds the final block (block 0 left out)."""
    paths, stack = [], [(0,)]
    while stack:
        path = stack.pop()
        for target in space.targets(path[-1]):
            if target == space.final_block:
                paths.append(path[1:])
            else:
                stack.append((*path, target))
    return sorted(paths)


def hand_designed_family(space: RoutingSpace) -> list[RoutedArch]:
    """MobileNetV2-like networks of the space: k3 t6 everywhere, every path, each with 0 .. L stack
    layers in every block that has them (L the most any block allows)."""
    if HAND_OP not in space.head_ops or HAND_OP not in space.stack_ops:
        raise ArchitectureError(f"{space.name} has no {HAND_OP} op, which the hand-designed family uses")
    family = []
    for depth in range(max(space.stack_layers) + 1):
        for path in space_paths(space):
            family.append(RoutedArch(space.name, tuple(
                RoutedBlock(b, HAND_OP, (HAND_OP,) * min(depth, space.stack_layers[b])) for b in path)))
    return list(dict.fromkeys(family))


def layers(arch: RoutedArch) -> int:
    return sum(1 + len(b.stack) for b in arch.blocks)


def hand_designed(space: RoutingSpace, cost: RoutingCost, target_ms: float,
                  tolerance: float = TOLERANCE, under: bool = False) -> RoutedArch:
    """The family member at `target_ms`: the one with the most layers within the window (the nearest
    to the target among those), else the nearest to the target."""
    low, high = window(target_ms, tolerance, under)
    priced = [(cost.exact(arch), arch) for arch in hand_designed_family(space)]
    inside = [(ms, arch) for ms, arch in priced if low <= ms <= high]
    if inside:
        return max(inside, key=lambda item: (layers(item[1]), -abs(item[0] - target_ms)))[1]
    return min(priced, key=lambda item: abs(item[0] - target_ms))[1]


def random_genotypes(space: CellSpace, count: int, seed: int = 0, cost: CellCost | None = None,
                     target_ms: float | None = None, tolerance: float = TOLERANCE) -> list[Genotype]:
    """`count` distinct random genotypes; with a cost and a target, only those predicted within it."""
    low, high = window(target_ms, tolerance) if target_ms is not None else (0.0, float("inf"))
    if target_ms is not None and cost is None:
        raise ArchitectureError("a target latency for random cells needs a latency table")
    rng, found = random.Random(seed), []
    for _ in range(10000 * count):
        genotype = sample_arch(space, rng)
        if genotype not in found and (cost is None or low <= cost.exact(genotype) <= high):
            found.append(genotype)
            if len(found) == count:
                return found
    raise ArchitectureError(f"found only {len(found)} random genotypes of {space.name} within {low:.4f} .. "
                            f"{high:.4f} ms in {10000 * count} draws")


def baseline_command(family: str, space_name: str, out: str | Path, table_path: str | None = None,
                     target_ms: float | None = None, count: int = 5, seed: int = 0,
                     tolerance: float = TOLERANCE, under: bool = False) -> dict:
    """`hwnas baseline random|hand`: write baseline architectures of a space (random: one JSON per
    architecture into the folder `out`; hand: the one JSON file `out`), each with its predicted latency."""
    from hwnas.latency.table import load_table
    from hwnas.runs import write_json

    out = Path(out)
    if out.exists():
        raise HwnasError(f"{out} exists; choose another --out or remove it")
    if count < 1:
        raise HwnasError(f"--count must be at least 1, got {count}")
    space = load_space(space_name)
    table = load_table(table_path) if table_path else None
    if target_ms is not None and table is None:
        raise HwnasError("--target-ms needs --table: the latency is the table's prediction")
    cost = (RoutingCost if space.kind == "routing" else CellCost)(space, table) if table else None
    if space.kind == "routing":
        if cost is None or target_ms is None:
            raise HwnasError(f"{space.name} is a routing space: give --table and --target-ms")
        archs = ([hand_designed(space, cost, target_ms, tolerance, under)] if family == "hand"
                 else random_routed_archs(space, cost, target_ms, count, seed, tolerance, under))
    elif family == "hand":
        raise HwnasError(f"{space.name} is a cell space; the hand-designed family is of routing spaces")
    else:
        archs = random_genotypes(space, count, seed, cost, target_ms, tolerance)
    files = [out] if family == "hand" else [out / f"{family}{i}.json" for i in range(len(archs))]
    rows = [{"file": str(path), "arch": str(arch),
             "predicted_ms": round(cost.exact(arch), 4) if cost else None} for path, arch in zip(files, archs)]
    for path, arch in zip(files, archs):
        write_json(path, arch.to_dict())
    return {"family": family, "space": space.name, "target_ms": target_ms, "tolerance": tolerance, "under": under,
            "architectures": rows}
