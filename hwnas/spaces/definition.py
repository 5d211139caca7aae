"""Search-space definitions as data (`configs/spaces/*.yaml`), validated on load.

A routing space (DenseNAS, docs/methods.md: DenseNAS) is a list of routing blocks with a width, an
output feature-map size, a stage and a number of stack layers. Block 0 is the stem's output; the
final 1x1 block comes after the last block. Which blocks may feed which follows from the numbers
alone, so any space (224, 32, a user's own) gets its connections, latency keys and supernet.

A cell space describes the final cell network (NetworkCIFAR layout) whose ops a cell method
chooses, so its latency keys can be profiled too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from hwnas.config import Strict, format_validation_error, read_yaml, resolve_path
from hwnas.limits import MAX_CELL_NODES, MAX_CHANNELS, MAX_CLASSES, MAX_DEPTH, MAX_SIDE
from hwnas.errors import ConfigError
from hwnas.ops.cell import PRIMITIVES
from hwnas.ops.mobile import MBCONV_OPS, parse_mbconv

SPACES_DIR = "configs/spaces"


class RoutingSpace(Strict):
    kind: Literal["routing"]
    name: str
    input_size: int = Field(gt=0, le=MAX_SIDE)
    input_channels: int = Field(3, gt=0, le=MAX_CHANNELS)
    num_classes: int = Field(gt=0, le=MAX_CLASSES)
    stem_op: str = Field("mbconv_k3_t1", description="the fixed op after the stem conv, inside block 0")
    widths: list[int] = Field(min_length=2, max_length=MAX_DEPTH)
    sizes: list[int] = Field(min_length=2, description="output feature-map side of each block")
    stages: list[int] = Field(min_length=2)
    stack_layers: list[int] = Field(min_length=2)
    max_connections: int = Field(4, gt=0, description="block i may feed blocks i+1 .. i+max_connections")
    head_ops: list[str] = Field(default_factory=lambda: list(MBCONV_OPS), min_length=1)
    stack_ops: list[str] = Field(default_factory=lambda: [*MBCONV_OPS, "skip_connect"], min_length=1)
    final_width: int = Field(1984, gt=0, le=MAX_CHANNELS, description="the 1x1 conv block before pooling and the classifier")

    @model_validator(mode="after")
    def _valid(self) -> "RoutingSpace":
        n = len(self.widths)
        for field in ("sizes", "stages", "stack_layers"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"{field} has {len(getattr(self, field))} entries but widths has {n}")
        if min(self.widths) <= 0 or min(self.sizes) <= 0 or min(self.stack_layers) < 0:
            raise ValueError("widths and sizes must be positive and stack_layers non-negative")
        if max(self.widths) > MAX_CHANNELS or max(self.stack_layers) > MAX_DEPTH:
            raise ValueError(f"widths must be at most {MAX_CHANNELS} and stack_layers at most {MAX_DEPTH}")
        if self.stack_layers[0]:
            raise ValueError("stack_layers[0] must be 0: block 0 is the stem's output")
        if any(b < a for a, b in zip(self.stages, self.stages[1:])):
            raise ValueError(f"stages must not decrease: {self.stages}")
        if any(a < b for a, b in zip(self.sizes, self.sizes[1:])):
            raise ValueError(f"sizes must not increase: {self.sizes}")
        if self.input_size % self.sizes[0] or self.input_size // self.sizes[0] not in (1, 2):
            raise ValueError(f"the stem maps input_size {self.input_size} to sizes[0] {self.sizes[0]}: "
                             "it must be the same or half")
        for name in (self.stem_op, *self.head_ops, *(op for op in self.stack_ops if op != "skip_connect")):
            parse_mbconv(name)
        if "skip_connect" in self.head_ops:
            raise ValueError("head_ops align widths and resolutions: they must be MBConvs, not skip_connect")
        for block in range(1, n + 1):
            if not self.sources(block):
                where = "the final block" if block == n else f"block {block}"
                raise ValueError(f"no block may feed {where} under the connection rules; check sizes and stages")
        return self

    @property
    def num_blocks(self) -> int:
        """Routing blocks, block 0 (the stem's output) included; index `num_blocks` is the final block."""
        return len(self.widths)

    @property
    def final_block(self) -> int:
        return self.num_blocks

    def width(self, block: int) -> int:
        return self.final_width if block == self.final_block else self.widths[block]

    def size(self, block: int) -> int:
        return self.sizes[-1] if block == self.final_block else self.sizes[block]

    def stage(self, block: int) -> int:
        return self.stages[-1] + 1 if block == self.final_block else self.stages[block]

    @property
    def stem_stride(self) -> int:
        return self.input_size // self.sizes[0]

    def stride(self, source: int, target: int) -> int:
        return self.size(source) // self.size(target)

    def targets(self, source: int) -> list[int]:
        """Blocks `source` may feed: the next ones up to max_connections, stopping at the first that is
        more than one stage ahead or whose feature map is not the same or half the size."""
        found = []
        for target in range(source + 1, min(source + self.max_connections, self.final_block) + 1):
            ratio, rest = divmod(self.size(source), self.size(target))
            if self.stage(target) - self.stage(source) > 1 or rest or ratio not in (1, 2):
                break
            found.append(target)
        return found

    def sources(self, target: int) -> list[int]:
        return [s for s in range(max(0, target - self.max_connections), target) if target in self.targets(s)]

    def connections(self) -> list[tuple[int, int]]:
        return [(s, t) for s in range(self.num_blocks) for t in self.targets(s)]


class CellSpace(Strict):
    """The final cell network (NetworkCIFAR layout) whose edges a cell method chooses ops for."""

    kind: Literal["cell"]
    name: str
    input_size: int = Field(32, gt=0, le=MAX_SIDE)
    input_channels: int = Field(3, gt=0, le=MAX_CHANNELS)
    num_classes: int = Field(10, gt=0, le=MAX_CLASSES)
    init_channels: int = Field(36, gt=0, le=MAX_CHANNELS)
    layers: int = Field(20, ge=3, le=MAX_DEPTH)
    nodes: int = Field(4, gt=0, le=MAX_CELL_NODES)
    stem_multiplier: int = Field(3, gt=0, le=MAX_CELL_NODES)
    primitives: list[str] = Field(default_factory=lambda: list(PRIMITIVES), min_length=1)

    @model_validator(mode="after")
    def _valid(self) -> "CellSpace":
        unknown = sorted(set(self.primitives) - set(PRIMITIVES))
        if unknown:
            raise ValueError(f"unknown primitives {unknown}; choose from {list(PRIMITIVES)}")
        if self.input_size % 4:
            raise ValueError(f"input_size {self.input_size} must be divisible by 4 (two reductions)")
        return self


def round_width(width: float, divisor: int = 8) -> int:
    """MobileNet's rounding: the nearest multiple of `divisor`, at least `divisor`, never more than 10% below."""
    rounded = max(divisor, int(width + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * width else rounded


def scaled_sizes(space: RoutingSpace, input_size: int, min_size: int) -> list[int]:
    """Feature-map sides for `input_size`: the space's downsamplings (the stem's, then each block's),
    dropping the earliest ones until every side is a whole number of at least `min_size`, as CIFAR
    variants of ImageNet networks do (MobileNetV2 on CIFAR keeps the stem and first stage at full size)."""
    strides = [space.stem_stride] + [a // b for a, b in zip(space.sizes, space.sizes[1:])]
    halvings = [i for i, s in enumerate(strides) if s == 2]
    for dropped in range(len(halvings) + (not halvings)):
        kept = set(halvings[dropped:])
        sizes, side = [], input_size
        for i in range(len(strides)):
            side = side / 2 if i in kept else side
            sizes.append(side)
        if sizes[-1] >= min_size and all(float(s).is_integer() for s in sizes):
            return [int(s) for s in sizes]
    raise ValueError(f"input_size {input_size} allows no downsampling to whole feature maps of at least "
                     f"{min_size} pixels; choose a size divisible by a power of two")


def derive_space(base: RoutingSpace, name: str, input_size: int | None = None, width: float = 1.0,
                 max_stack_layers: int | None = None, max_connections: int | None = None,
                 num_classes: int | None = None, min_size: int = 4) -> RoutingSpace:
    """A routing space scaled from `base`: widths (final block included) times `width` rounded to
    multiples of 8, at most `max_stack_layers` per block, feature maps for `input_size`, and optionally
    fewer connections per block. Every path of a routing supernet is evaluated, so the number of
    blocks, stack layers and connections set the cost of a search step as much as the widths do."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    data = base.model_dump()
    data["name"] = name
    data["widths"] = [round_width(w * width) for w in base.widths]
    data["final_width"] = round_width(base.final_width * width)
    if input_size is not None:
        data["input_size"] = input_size
        data["sizes"] = scaled_sizes(base, input_size, min_size)
    if max_stack_layers is not None:
        data["stack_layers"] = [min(n, max_stack_layers) for n in base.stack_layers]
    if max_connections is not None:
        data["max_connections"] = max_connections
    _merge_equal_blocks(data)
    if num_classes is not None:
        data["num_classes"] = num_classes
    return RoutingSpace.model_validate(data)


def _merge_equal_blocks(data: dict) -> None:
    """Neighbouring blocks that rounding left alike (same width, size and stage) are one block: the
    second would only repeat the first's choice; it keeps the larger number of stack layers."""
    columns = ("widths", "sizes", "stages", "stack_layers")
    blocks = [list(block) for block in zip(*(data[c] for c in columns))]
    merged = blocks[:1]
    for block in blocks[1:]:
        if len(merged) > 1 and block[:3] == merged[-1][:3]:
            merged[-1][3] = max(merged[-1][3], block[3])
        else:
            merged.append(block)
    for i, column in enumerate(columns):
        data[column] = [block[i] for block in merged]


class DerivedSpace(Strict):
    """A space file that derives its space from another: `derive: {from: densenas_224, width: 0.5, ...}`."""

    class Derivation(Strict):
        from_: str = Field(alias="from", description="the base space: a name under configs/spaces/ or a YAML file")
        input_size: int | None = Field(None, gt=0)
        width: float = Field(1.0, gt=0.0)
        max_stack_layers: int | None = Field(None, ge=0)
        max_connections: int | None = Field(None, gt=0)
        num_classes: int | None = Field(None, gt=0)
        min_size: int = Field(4, gt=0)

    name: str
    derive: Derivation


Space = Annotated[Union[RoutingSpace, CellSpace], Field(discriminator="kind")]
_SPACE = TypeAdapter(Space)


def space_path(name_or_path: str | Path) -> Path:
    """A space YAML path, or the name of one under configs/spaces/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return resolve_path(path)
    return resolve_path(f"{SPACES_DIR}/{name_or_path}.yaml")


def load_space(name_or_path: str | Path) -> RoutingSpace | CellSpace:
    path = space_path(name_or_path)
    if not path.is_file():
        shipped = sorted(p.stem for p in resolve_path(SPACES_DIR).glob("*.yaml"))
        raise ConfigError(f"space {str(name_or_path)!r} not found (looked for {path}); "
                          f"shipped spaces: {', '.join(shipped)}, or give a YAML file")
    definition = read_yaml(path)
    if "derive" in definition:
        return _derived(definition, str(path))
    return parse_space(definition, str(path))


def _derived(definition: dict, source: str) -> RoutingSpace:
    try:
        spec = DerivedSpace.model_validate(definition)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None
    derivation = spec.derive
    if space_path(derivation.from_) == resolve_path(source):
        raise ConfigError(f"{source}: a space cannot derive from itself")
    try:
        return derive_from(derivation.from_, spec.name, **derivation.model_dump(exclude={"from_"}))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def derive_from(base: str | Path, name: str, **scaling) -> RoutingSpace:
    """`derive_space` from a space name or file, its errors as one-line ConfigErrors."""
    source = load_space(base)
    if source.kind != "routing":
        raise ConfigError(f"only routing spaces can be derived; {source.name} is a {source.kind} space")
    try:
        return derive_space(source, name, **scaling)
    except (ValueError, ValidationError) as exc:
        detail = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(f"deriving from {source.name}: {detail}") from None


def derive_command(base: str, out: str | Path, name: str | None = None, **scaling) -> dict:
    """`hwnas space derive`: write the full definition of a space derived from `base` to `out`."""
    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out}: a space file ends in .yaml")
    if out.exists():
        raise ConfigError(f"{out} exists; choose another --out or remove it")
    scaling = {k: v for k, v in scaling.items() if v is not None}
    space = derive_from(base, name or out.stem, **scaling)
    source = load_space(base)
    settings = ", ".join(f"{k} {v}" for k, v in scaling.items())
    header = f"# Derived from {source.name}" + (f" ({settings})" if settings else "") + " by `hwnas space derive`.\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False, default_flow_style=None))
    return {"space": space.name, "out": str(out), "base": source.name, "blocks": space.num_blocks,
            "widths": space.widths, "sizes": space.sizes, "connections": len(space.connections())}


def parse_space(definition: object, source: str) -> RoutingSpace | CellSpace:
    """A space from its definition (a YAML file's content, or the copy a kit or table carries)."""
    try:
        return _SPACE.validate_python(definition)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None
