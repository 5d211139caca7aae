"""Routed architectures (DenseNAS paths) as data, and the published DenseNAS-C.

A `RoutedArch` is the path a network takes through a routing space: for each routing block on the
path (after block 0, the stem's output) the head op that maps the previous path block's output to
this block, and the stack ops kept (layers whose best op was skip are dropped). The last block on the
path feeds the final 1x1 block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from hwnas.errors import ArchitectureError
from hwnas.spaces.definition import RoutingSpace


@dataclass(frozen=True)
class RoutedBlock:
    block: int
    head: str
    stack: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoutedArch:
    kind: ClassVar[str] = "routing"  # hwnas/kinds/routing.py
    space: str
    blocks: tuple[RoutedBlock, ...]

    @property
    def path(self) -> tuple[int, ...]:
        """Block indices from block 0 to the block feeding the final 1x1 block."""
        return (0, *(b.block for b in self.blocks))

    def __str__(self) -> str:
        steps = [f"{b.block}:{b.head}" + (f"[{','.join(b.stack)}]" if b.stack else "") for b in self.blocks]
        return f"{self.space}: 0 -> " + " -> ".join(steps) + " -> final"

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space,
                "blocks": [{"block": b.block, "head": b.head, "stack": list(b.stack)} for b in self.blocks]}

    @classmethod
    def from_dict(cls, data: Any) -> "RoutedArch":
        try:
            blocks = tuple(RoutedBlock(int(b["block"]), str(b["head"]), tuple(str(op) for op in b.get("stack", ())))
                           for b in data["blocks"])
            return cls(str(data["space"]), blocks)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArchitectureError(
                f"not a routed architecture ({exc.__class__.__name__}: {exc}); expected "
                '{"space": NAME, "blocks": [{"block": 1, "head": "mbconv_k3_t6", "stack": [...]}, ...]}') from None

    def check(self, space: RoutingSpace) -> "RoutedArch":
        """Raise ArchitectureError unless this path and its ops are allowed in `space`."""
        if not self.blocks:
            raise ArchitectureError("a routed architecture needs at least one block after the stem")
        stack_ops = [op for op in space.stack_ops if op != "skip_connect"]
        for prev, b in zip(self.path, self.blocks):
            if not 0 < b.block < space.num_blocks:
                raise ArchitectureError(f"block {b.block} is not a routing block of {space.name} "
                                        f"(1 .. {space.num_blocks - 1})")
            if b.block not in space.targets(prev):
                raise ArchitectureError(f"{space.name} has no connection from block {prev} to block {b.block} "
                                        f"(block {prev} may feed {space.targets(prev)})")
            if b.head not in space.head_ops:
                raise ArchitectureError(f"block {b.block}: head op {b.head!r} is not one of {space.head_ops}")
            if len(b.stack) > space.stack_layers[b.block]:
                raise ArchitectureError(f"block {b.block} has {len(b.stack)} stack ops but the space allows "
                                        f"{space.stack_layers[b.block]}")
            for op in b.stack:
                if op not in stack_ops:
                    raise ArchitectureError(f"block {b.block}: stack op {op!r} is not one of {stack_ops} "
                                            "(skip layers are left out)")
        last = self.path[-1]
        if space.final_block not in space.targets(last):
            raise ArchitectureError(f"the path ends at block {last}, which cannot feed the final 1x1 block of "
                                    f"{space.name} (blocks {space.sources(space.final_block)} can)")
        return self

    def format(self, space: RoutingSpace) -> str:
        """One line per block as docs/methods.md writes DenseNAS architectures: [in, out] head [stack] stride."""
        w0 = space.widths[0]
        rows = [(f"[{w0},{w0}]", space.stem_op, "[]", "stride 1")]
        for prev, b in zip(self.path, self.blocks):
            rows.append((f"[{space.width(prev)},{space.width(b.block)}]", b.head, f"[{', '.join(b.stack)}]",
                         f"stride {space.stride(prev, b.block)}"))
        rows.append((f"[{space.width(self.path[-1])},{space.final_width}]", "conv1_1", "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths + [0])).rstrip() for row in rows)


def _arch(space: str, *blocks: tuple[int, str, list[str]]) -> RoutedArch:
    return RoutedArch(space, tuple(RoutedBlock(i, head, tuple(stack)) for i, head, stack in blocks))


ROUTED_ZOO: dict[str, RoutedArch] = {
    # The released DenseNAS default (docs/methods.md: DenseNAS): 16-24-48-72-128-160-176-384 through the 224 space.
    "DenseNAS-C": _arch(
        "densenas_224",
        (1, "mbconv_k3_t6", []),
        (4, "mbconv_k7_t6", ["mbconv_k3_t3"]),
        (7, "mbconv_k5_t6", ["mbconv_k3_t6", "mbconv_k3_t3"]),
        (10, "mbconv_k3_t6", ["mbconv_k3_t3", "mbconv_k3_t3"]),
        (11, "mbconv_k3_t6", ["mbconv_k7_t3", "mbconv_k5_t6", "mbconv_k7_t3"]),
        (12, "mbconv_k3_t3", ["mbconv_k3_t6", "mbconv_k3_t6", "mbconv_k3_t6"]),
        (16, "mbconv_k7_t6", []),
    ),
}
