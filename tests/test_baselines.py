"""Baselines of a space: uniform random architectures at a table latency, the MobileNetV2-like family."""

import collections
import itertools
import random

import pytest

from hwnas.baselines import (HAND_OP, RoutedArchCounter, hand_designed, hand_designed_family, layers,
                             random_genotypes, random_routed_archs, space_paths)
from hwnas.cli import main
from hwnas.errors import ArchitectureError
from hwnas.latency.cost import CellCost, RoutingCost
from hwnas.latency.table import load_table
from hwnas.archs.routed import RoutedArch, RoutedBlock
from hwnas.spaces.definition import load_space

from latency_helpers import load_tiny_space, synthetic_table

SMALL_TABLE = "latency_tables/amd-epyc-2core-ort-1thread/densenas_32_small.csv"


@pytest.fixture
def tiny(tmp_path):
    return load_tiny_space(tmp_path)


@pytest.fixture
def tiny_cost(tiny):
    table, _ = synthetic_table(tiny)
    return RoutingCost(tiny, table)


def every_arch(space) -> set[RoutedArch]:
    """Every distinct architecture of a small space, by brute force."""
    ops = [op for op in space.stack_ops if op != "skip_connect"]
    found = set()
    for path in space_paths(space):
        per_block = [[RoutedBlock(b, head, stack) for head in space.head_ops
                      for n in range(space.stack_layers[b] + 1) for stack in itertools.product(ops, repeat=n)]
                     for b in path]
        found.update(RoutedArch(space.name, blocks) for blocks in itertools.product(*per_block))
    return found


def test_counts_match_brute_force(tiny, tiny_cost):
    archs = every_arch(tiny)
    latencies = sorted(tiny_cost.exact(a) for a in archs)
    counter = RoutedArchCounter(tiny, tiny_cost, latencies[-1] * 1.1)
    assert counter.in_window(0, latencies[-1] * 1.05) == len(archs) > 20
    middle = latencies[len(latencies) // 2]
    exact = sum(1 for ms in latencies if middle * 0.9 <= ms <= middle * 1.1)
    assert abs(counter.in_window(middle * 0.9, middle * 1.1) - exact) <= 2  # bins round at the edges


def test_random_archs_are_uniform_among_those_in_the_window(tiny, tiny_cost):
    archs = every_arch(tiny)
    latencies = sorted(tiny_cost.exact(a) for a in archs)
    target = latencies[len(latencies) // 2]
    inside = {a for a in archs if target * 0.8 <= tiny_cost.exact(a) <= target * 1.2}
    assert len(inside) >= 8
    counter = RoutedArchCounter(tiny, tiny_cost, target * 1.3)
    rng = random.Random(0)
    draws = collections.Counter(counter.draw(target * 0.8, target * 1.2, rng) for _ in range(200 * len(inside)))
    assert set(draws) <= inside | {a for a in archs if target * 0.78 <= tiny_cost.exact(a) <= target * 1.22}
    frequencies = [draws[a] / 200 for a in inside]  # about 1 each when uniform
    assert min(frequencies) > 0.6 and max(frequencies) < 1.4


# near the top of the range only the path through every block is slow enough, so the spread is asked
# of the lower half, where the benchmark's budgets lie
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_random_archs_lie_in_their_window_and_spread_over_the_space(fraction):
    space = load_space("densenas_32_small")
    cost = RoutingCost(space, load_table(SMALL_TABLE))
    low, high = cost.bounds()
    target = low + fraction * (high - low)
    archs = random_routed_archs(space, cost, target, 12, seed=1)
    assert len(set(archs)) == 12
    for arch in archs:
        arch.check(space)
        assert target * 0.97 <= cost.exact(arch) <= target * 1.03
    assert len({a.path for a in archs}) >= 4  # not one path with different ops
    heads = collections.Counter(b.head for a in archs for b in a.blocks)
    assert len(heads) == len(space.head_ops)
    assert random_routed_archs(space, cost, target, 12, seed=1) == archs  # the seed fixes them


def test_under_draws_where_a_budget_search_derives():
    space = load_space("densenas_32_small")
    cost = RoutingCost(space, load_table(SMALL_TABLE))
    archs = random_routed_archs(space, cost, 0.6, 8, seed=2, tolerance=0.05, under=True)
    assert all(0.57 <= cost.exact(a) <= 0.6 for a in archs)
    assert 0.57 <= cost.exact(hand_designed(space, cost, 0.6, 0.05, under=True)) <= 0.6


def test_no_architecture_in_the_window_is_an_error(tiny, tiny_cost):
    low, _ = tiny_cost.bounds()
    with pytest.raises(ArchitectureError, match="no architecture|fewer than"):
        random_routed_archs(tiny, tiny_cost, low * 0.5, 3)


def test_hand_designed_family_is_k3_t6_with_uniform_depth():
    space = load_space("densenas_32_small")
    family = hand_designed_family(space)
    assert len(family) == len(space_paths(space)) * (max(space.stack_layers) + 1)
    for arch in family:
        arch.check(space)
        assert {b.head for b in arch.blocks} == {HAND_OP} and {op for b in arch.blocks for op in b.stack} <= {HAND_OP}
        depths = {len(b.stack) for b in arch.blocks if space.stack_layers[b.block]}
        assert len(depths) <= 1  # every block with stack layers keeps the same number
    deepest = max(family, key=layers)
    assert deepest.path == tuple(range(space.num_blocks))  # the canonical chain, through every block
    assert layers(deepest) == space.num_blocks - 1 + sum(space.stack_layers)


def test_hand_designed_at_a_target_is_the_deepest_member_inside_the_tolerance():
    space = load_space("densenas_32_small")
    cost = RoutingCost(space, load_table(SMALL_TABLE))
    family = hand_designed_family(space)
    priced = sorted(cost.exact(a) for a in family)
    target = priced[len(priced) // 2]
    chosen = hand_designed(space, cost, target)
    assert target * 0.97 <= cost.exact(chosen) <= target * 1.03
    assert layers(chosen) == max(layers(a) for a in family if target * 0.97 <= cost.exact(a) <= target * 1.03)
    beyond = hand_designed(space, cost, priced[-1] * 2)  # out of the family's reach: its nearest member
    assert cost.exact(beyond) == pytest.approx(priced[-1])


def test_random_cells_within_a_latency_window():
    space = load_space("darts_cifar10")
    cost = CellCost(space, load_table("latency_tables/amd-epyc-2core-ort-1thread/darts_cifar10.csv"))
    low, high = cost.bounds()
    target = (low + high) / 2
    cells = random_genotypes(space, 6, seed=0, cost=cost, target_ms=target, tolerance=0.05)
    assert len(set(cells)) == 6
    assert all(target * 0.95 <= cost.exact(g) <= target * 1.05 for g in cells)
    assert len(set(random_genotypes(space, 8, seed=0))) == 8


def test_baseline_command_writes_architectures(tmp_path, capsys):
    out = tmp_path / "random"
    assert main(["baseline", "random", "--space", "densenas_32_small", "--table", SMALL_TABLE, "--target-ms", "0.6",
                 "--count", "3", "--out", str(out)]) == 0
    files = sorted(out.glob("*.json"))
    assert len(files) == 3
    space = load_space("densenas_32_small")
    cost = RoutingCost(space, load_table(SMALL_TABLE))
    from hwnas.kinds import load_arch

    assert all(0.582 <= cost.exact(load_arch(f, "routing")) <= 0.618 for f in files)
    hand = tmp_path / "hand.json"
    assert main(["baseline", "hand", "--space", "densenas_32_small", "--table", SMALL_TABLE, "--target-ms", "0.6",
                 "--out", str(hand)]) == 0
    assert {b.head for b in load_arch(hand, "routing").blocks} == {HAND_OP}
    assert main(["baseline", "hand", "--space", "densenas_32_small", "--table", SMALL_TABLE, "--target-ms", "0.6",
                 "--out", str(hand)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err
