"""Cell genotypes as data, and the zoo of published cells (docs/methods.md: Published cells).

A `Genotype` lists, per cell type, two (op, input state) pairs per intermediate node; states 0 and
1 are the cell's inputs, state 2+i is node i. `reduce=None` means the fixed reduction cell of
GDAS-FRC is used instead of a searched one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from hwnas.errors import ArchitectureError
from hwnas.ops.cell import OPS

Pairs = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Genotype:
    kind: ClassVar[str] = "cell"  # hwnas/kinds/cell.py
    normal: Pairs
    normal_concat: tuple[int, ...]
    reduce: Pairs | None
    reduce_concat: tuple[int, ...] | None

    def __post_init__(self) -> None:
        _check_cell("normal", self.normal, self.normal_concat)
        if (self.reduce is None) != (self.reduce_concat is None):
            raise ArchitectureError("genotype: `reduce` and `reduce_concat` must both be given or both be null")
        if self.reduce is not None:
            _check_cell("reduce", self.reduce, self.reduce_concat)

    @property
    def fixed_reduction(self) -> bool:
        return self.reduce is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "cell",
            "normal": [list(p) for p in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": None if self.reduce is None else [list(p) for p in self.reduce],
            "reduce_concat": None if self.reduce_concat is None else list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Genotype":
        if not isinstance(data, dict):
            raise ArchitectureError("genotype: expected a JSON object with `normal` and `reduce`")
        unknown = set(data) - {"kind", "normal", "normal_concat", "reduce", "reduce_concat"}
        if unknown:
            raise ArchitectureError(f"genotype: unknown keys {sorted(unknown)}")
        if data.get("kind", "cell") != "cell":
            raise ArchitectureError(f"genotype: kind is {data.get('kind')!r}, expected 'cell'")
        try:
            normal = _pairs(data["normal"])
            reduce = None if data.get("reduce") is None else _pairs(data["reduce"])
            normal_concat = tuple(int(i) for i in data.get("normal_concat", _default_concat(normal)))
            if reduce is None:
                reduce_concat = None
            else:
                reduce_concat = tuple(int(i) for i in data.get("reduce_concat") or _default_concat(reduce))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchitectureError(f"genotype: malformed ({exc})") from None
        return cls(normal, normal_concat, reduce, reduce_concat)

    def __str__(self) -> str:
        def cell(pairs: Pairs, concat: tuple[int, ...]) -> str:
            nodes = [
                f"  node {i + 2} = " + " + ".join(f"{op}({src})" for op, src in pairs[2 * i: 2 * i + 2])
                for i in range(len(pairs) // 2)
            ]
            return "\n".join(nodes + [f"  concat {list(concat)}"])

        reduce = "  fixed (GDAS FRC)" if self.reduce is None else cell(self.reduce, self.reduce_concat)
        return f"normal cell:\n{cell(self.normal, self.normal_concat)}\nreduction cell:\n{reduce}"


def _default_concat(pairs: Pairs) -> list[int]:
    return list(range(2, 2 + len(pairs) // 2))


def _pairs(raw: Any) -> Pairs:
    pairs = []
    for item in raw:
        op, src = item
        if not isinstance(op, str) or isinstance(src, bool) or not isinstance(src, int):
            raise ValueError(f"each entry is [op name, input index], got {item!r}")
        pairs.append((op, src))
    return tuple(pairs)


def _check_cell(kind: str, pairs: Pairs, concat: tuple[int, ...] | None) -> None:
    if not pairs or len(pairs) % 2:
        raise ArchitectureError(f"genotype {kind} cell: needs two (op, input) pairs per node, got {len(pairs)} pairs")
    for index, (op, src) in enumerate(pairs):
        node = index // 2
        if op not in OPS:
            raise ArchitectureError(f"genotype {kind} cell: unknown op {op!r}; known ops: {', '.join(OPS)}")
        if op == "none":
            raise ArchitectureError(f"genotype {kind} cell: `none` cannot be a chosen op")
        if not 0 <= src < node + 2:
            raise ArchitectureError(
                f"genotype {kind} cell: node {node + 2} takes input {src}, but only states 0..{node + 1} exist"
            )
    states = len(pairs) // 2 + 2
    if not concat or any(not 2 <= i < states for i in concat):
        raise ArchitectureError(f"genotype {kind} cell: concat {concat} must list nodes among 2..{states - 1}")


def _g(normal: list, reduce: list | None, normal_concat=(2, 3, 4, 5), reduce_concat=(2, 3, 4, 5)) -> Genotype:
    return Genotype(
        tuple(normal), tuple(normal_concat),
        None if reduce is None else tuple(reduce), None if reduce is None else tuple(reduce_concat),
    )


ZOO: dict[str, Genotype] = {
    "NASNet": _g(
        [("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0), ("avg_pool_3x3", 1),
         ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 1)],
        [("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0), ("avg_pool_3x3", 1),
         ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2), ("sep_conv_3x3", 2), ("max_pool_3x3", 1)],
        normal_concat=(2, 3, 4, 5, 6), reduce_concat=(4, 5, 6),
    ),
    "AmoebaNet": _g(
        [("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2), ("sep_conv_3x3", 0),
         ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1), ("skip_connect", 0), ("avg_pool_3x3", 1)],
        [("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2), ("sep_conv_7x7", 0),
         ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)],
        normal_concat=(4, 5, 6), reduce_concat=(3, 4, 6),
    ),
    "DARTS_V1": _g(
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    ),
    "DARTS_V2": _g(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    ),
    "PC_DARTS_cifar": _g(
        [("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
         ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
         ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    ),
    "PC_DARTS_image": _g(
        [("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1),
         ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)],
        [("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
         ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 3)],
    ),
    "PDARTS": _g(
        [("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
        [("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
         ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
    ),
    "GDAS_V1": _g(
        [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_5x5", 2),
         ("sep_conv_3x3", 3), ("skip_connect", 0), ("sep_conv_5x5", 4), ("sep_conv_3x3", 3)],
        [("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("sep_conv_5x5", 2), ("sep_conv_5x5", 1),
         ("dil_conv_5x5", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_5x5", 1)],
    ),
    "GDAS_F1": _g(
        [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_3x3", 2),
         ("skip_connect", 0), ("sep_conv_3x3", 2), ("skip_connect", 0), ("sep_conv_3x3", 2)],
        None,
    ),
}
