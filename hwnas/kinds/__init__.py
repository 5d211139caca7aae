"""Kinds of architecture, each behind one interface, looked up by `kind`.

A cell space's architectures are genotypes (`hwnas/archs/genotype.py`), a routing space's are routed paths
(`hwnas/archs/routed.py`). What differs between them (how one is read, printed, built into its final network,
keyed for latency, sampled, drawn, trained by default) is asked of `kind_of(arch_or_space)`, so shared
code never tests which type it holds. Each kind is one module here (`cell.py`, `routing.py`) implementing
`base.ArchKind`; a third kind of space is one more module, registered in `KINDS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hwnas.errors import ArchitectureError
from hwnas.kinds.base import ArchKind
from hwnas.kinds.cell import CellKind
from hwnas.kinds.routing import RoutingKind

KINDS: dict[str, ArchKind] = {kind.name: kind for kind in (CellKind(), RoutingKind())}


def kind_of(arch_or_space) -> ArchKind:
    """The kind of an architecture or a space (both carry `kind`)."""
    return KINDS[arch_or_space.kind]


def build_model(arch, model_cfg, num_classes: int, in_channels: int) -> nn.Module:
    """The final network of an architecture: a cell genotype with `model_cfg`'s layout, a routed one of its space."""
    return kind_of(arch).build_model(arch, model_cfg, num_classes, in_channels)


def arch_from_dict(data: Any):
    """An architecture from its JSON object, of whichever kind claims it."""
    if isinstance(data, dict):
        for kind in KINDS.values():
            if kind.claims(data):
                return kind.from_dict(data)
    raise ArchitectureError("not an architecture: expected a genotype (`normal`, `reduce`) or a routed "
                            "architecture (`space`, `blocks`)")


def zoo() -> dict[str, Any]:
    """Every kind's published architectures, by name."""
    return {name: arch for kind in KINDS.values() for name, arch in kind.zoo().items()}


def load_arch(name_or_path: str | Path, kind: str | None = None):
    """The one reader of architectures: a zoo name, or a JSON file holding one (a search's `arch.json`,
    or a report with an `arch` entry); of any kind, or only of `kind`."""
    kinds = [KINDS[kind]] if kind else list(KINDS.values())
    known = {name: arch for k in kinds for name, arch in k.zoo().items()}
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    path = Path(name_or_path)
    if not path.exists():
        raise ArchitectureError(f"unknown architecture {str(name_or_path)!r}: not a zoo name "
                                f"({', '.join(known)}) and no such file")
    from hwnas.files import read_json

    data = read_json(path, ArchitectureError, "architecture file (arch.json)")
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        data = data["arch"]
    try:
        return kinds[0].from_dict(data) if kind else arch_from_dict(data)
    except ArchitectureError as exc:
        raise ArchitectureError(f"{path}: {exc}") from None


def check_kind(space, arch) -> None:
    if space.kind != arch.kind:
        raise ArchitectureError(f"a {arch.kind} architecture does not belong to the {space.kind} space {space.name}")
