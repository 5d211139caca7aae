"""Latency keys: the full signature of one op as it runs inside a deployed network.

A key names the op (`mbconv_k5_t6`, `sep_conv_3x3`, `conv3x3_bn_relu6`, ...), its input width, output
width, input side, stride, batch and dtype; kernel and expansion follow from the op name. The keys a
space needs are computed from its definition, and the keys of one architecture are the rows its
predicted latency sums. Identity ops (skip at stride 1, `none`) cost nothing and have no key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

from torch import nn

from hwnas.errors import LatencyError
from hwnas.archs.genotype import Genotype
from hwnas.models.cell_net import reduction_indices
from hwnas.ops.cell import OPS, FactorizedReduce, ReLUConvBN
from hwnas.ops.mobile import ConvBNReLU6, mobile_op, parse_mbconv
from hwnas.archs.routed import RoutedArch
from hwnas.spaces.definition import CellSpace, RoutingSpace

_KERNEL = re.compile(r"(?:_k|conv|_)(\d)(?:x\d)?(?:_|$)")


@dataclass(frozen=True, order=True)
class OpKey:
    op: str
    c_in: int
    c_out: int
    size: int  # input feature-map side
    stride: int = 1
    batch: int = 1
    dtype: str = "float32"

    @property
    def kernel(self) -> int:
        if self.op.startswith("mbconv"):
            return parse_mbconv(self.op)[0]
        match = _KERNEL.search(self.op)
        return int(match.group(1)) if match else 1

    @property
    def expansion(self) -> int:
        return parse_mbconv(self.op)[1] if self.op.startswith("mbconv") else 1

    @property
    def name(self) -> str:
        """e.g. `mbconv_k5_t6:24x56x56:32:s2:b1:float32` (op : input CxHxW : output width : stride : batch : dtype)."""
        return f"{self.op}:{self.c_in}x{self.size}x{self.size}:{self.c_out}:s{self.stride}:b{self.batch}:{self.dtype}"

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.c_in, self.size, self.size)

    def fields(self) -> dict[str, object]:
        return {"key": self.name, "op": self.op, "c_in": self.c_in, "c_out": self.c_out, "size": self.size,
                "stride": self.stride, "kernel": self.kernel, "expansion": self.expansion, "batch": self.batch,
                "dtype": self.dtype}

    def __str__(self) -> str:
        return self.name


def _same_width(build: Callable[[int, int], nn.Module]) -> Callable[[int, int, int], nn.Module]:
    def make(c_in: int, c_out: int, stride: int) -> nn.Module:
        if c_in != c_out:
            raise ValueError(f"this op keeps its width, got {c_in} -> {c_out}")
        return build(c_in, stride)
    return make


# op name -> builder(c_in, c_out, stride) of the module a deployed network runs (eval mode, affine BN)
OP_BUILDERS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "conv3x3_bn_relu6": lambda i, o, s: ConvBNReLU6(i, o, 3, s),
    "conv1x1_bn_relu6": lambda i, o, s: ConvBNReLU6(i, o, 1, s),
    "gap_linear": lambda i, o, s: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(i, o)),
    "conv3x3_bn": lambda i, o, s: nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o)),
    "relu_conv1x1_bn": lambda i, o, s: ReLUConvBN(i, o, 1, s, 0),
    "factorized_reduce": lambda i, o, s: FactorizedReduce(i, o),
    **{name: _same_width(lambda c, s, name=name: OPS[name](c, s, True))
       for name in OPS if name not in ("none", "skip_connect")},
}


def build_op(key: OpKey) -> nn.Module:
    """The module a key measures, in eval mode."""
    if key.op.startswith("mbconv"):
        return mobile_op(key.op, key.c_in, key.c_out, key.stride).eval()
    if key.op not in OP_BUILDERS:
        raise ValueError(f"no builder for op {key.op!r}")
    return OP_BUILDERS[key.op](key.c_in, key.c_out, key.stride).eval()


# ---- routing spaces ----

def stem_keys(space: RoutingSpace, batch: int) -> list[OpKey]:
    w0 = space.widths[0]
    return [OpKey("conv3x3_bn_relu6", space.input_channels, w0, space.input_size, space.stem_stride, batch),
            OpKey(space.stem_op, w0, w0, space.sizes[0], 1, batch)]


def head_key(space: RoutingSpace, op: str, source: int, target: int, batch: int) -> OpKey:
    return OpKey(op, space.width(source), space.width(target), space.size(source), space.stride(source, target), batch)


def stack_key(space: RoutingSpace, op: str, block: int, batch: int) -> OpKey:
    return OpKey(op, space.width(block), space.width(block), space.size(block), 1, batch)


def final_key(space: RoutingSpace, source: int, batch: int) -> OpKey:
    return OpKey("conv1x1_bn_relu6", space.width(source), space.final_width, space.size(source), 1, batch)


def classifier_key(space: RoutingSpace, batch: int) -> OpKey:
    return OpKey("gap_linear", space.final_width, space.num_classes, space.sizes[-1], 1, batch)


def routing_space_keys(space: RoutingSpace, batch: int = 1) -> list[OpKey]:
    """The stem, every head op on every connection, every stack op at every block, every final 1x1
    branch and the classifier."""
    keys = stem_keys(space, batch)
    for source, target in space.connections():
        if target == space.final_block:
            keys.append(final_key(space, source, batch))
        else:
            keys += [head_key(space, op, source, target, batch) for op in space.head_ops]
    for block in range(space.num_blocks):
        if space.stack_layers[block]:
            keys += [stack_key(space, op, block, batch) for op in space.stack_ops if op != "skip_connect"]
    keys.append(classifier_key(space, batch))
    return _unique(keys)


def routed_arch_keys(space: RoutingSpace, arch: RoutedArch, batch: int = 1) -> list[tuple[str, OpKey]]:
    """(part, key) for every op of the final network of `arch`; part names the block for a breakdown."""
    arch.check(space)
    parts = [("stem", key) for key in stem_keys(space, batch)]
    for prev, b in zip(arch.path, arch.blocks):
        part = f"block {b.block} [{space.width(prev)},{space.width(b.block)}]"
        parts.append((part, head_key(space, b.head, prev, b.block, batch)))
        parts += [(part, stack_key(space, op, b.block, batch)) for op in b.stack]
    parts.append(("final 1x1", final_key(space, arch.path[-1], batch)))
    parts.append(("classifier", classifier_key(space, batch)))
    return parts


# ---- cell spaces (NetworkCIFAR layout) ----

def _cells(space: CellSpace):
    """(index, reduction, reduction_prev, C_pp, C_p, C, input side) of each cell, as CellNetwork builds them."""
    reductions = reduction_indices(space.layers)
    C_stem = space.stem_multiplier * space.init_channels
    C_pp, C_p, C, reduction_prev, size = C_stem, C_stem, space.init_channels, False, space.input_size
    for i in range(space.layers):
        reduction = i in reductions
        C = C * 2 if reduction else C
        yield i, reduction, reduction_prev, C_pp, C_p, C, size
        C_pp, C_p, reduction_prev = C_p, space.nodes * C, reduction
        size = size // 2 if reduction else size


def _cell_op_key(op: str, C: int, size: int, stride: int, batch: int) -> OpKey | None:
    if op == "none" or (op == "skip_connect" and stride == 1):
        return None  # adds nothing / identity
    if op == "skip_connect":
        return OpKey("factorized_reduce", C, C, size, stride, batch)
    return OpKey(op, C, C, size, stride, batch)


def _cell_fixed_keys(space: CellSpace, batch: int) -> tuple[OpKey, list[list[OpKey]], OpKey]:
    """The stem, each cell's two preprocessing ops and the classifier."""
    stem = OpKey("conv3x3_bn", space.input_channels, space.stem_multiplier * space.init_channels,
                 space.input_size, 1, batch)
    pre = []
    final_width = final_size = 0
    for _, reduction, reduction_prev, C_pp, C_p, C, size in _cells(space):
        pre0 = (OpKey("factorized_reduce", C_pp, C, size * 2, 2, batch) if reduction_prev
                else OpKey("relu_conv1x1_bn", C_pp, C, size, 1, batch))
        pre.append([pre0, OpKey("relu_conv1x1_bn", C_p, C, size, 1, batch)])
        final_width, final_size = space.nodes * C, size // 2 if reduction else size
    return stem, pre, OpKey("gap_linear", final_width, space.num_classes, final_size, 1, batch)


def cell_fixed_keys(space: CellSpace, batch: int = 1) -> list[OpKey]:
    """The keys every final cell network of `space` has, whatever its genotype: stem, preprocessing, classifier."""
    stem, pre, classifier = _cell_fixed_keys(space, batch)
    return [stem, *(k for pair in pre for k in pair), classifier]


def cell_edge_keys(space: CellSpace, reduction: bool, state: int, op: str, batch: int = 1) -> list[OpKey]:
    """The keys of `op` on an edge from `state` in every normal (or every reduction) cell of the network."""
    keys = []
    for _, is_reduction, _, _, _, C, size in _cells(space):
        if is_reduction == reduction:
            stride = 2 if reduction and state < 2 else 1
            key = _cell_op_key(op, C, size if stride == 2 or not reduction else size // 2, stride, batch)
            keys += [key] if key else []
    return keys


def cell_space_keys(space: CellSpace, batch: int = 1) -> list[OpKey]:
    """Every primitive at every (width, resolution, stride) the final cell network uses, with its stem,
    preprocessing ops and classifier."""
    stem, pre, classifier = _cell_fixed_keys(space, batch)
    keys = [stem, *(k for pair in pre for k in pair)]
    for _, reduction, _, _, _, C, size in _cells(space):
        for op in space.primitives:
            strides = [(size, 2), (size // 2, 1)] if reduction else [(size, 1)]
            keys += [k for s, stride in strides if (k := _cell_op_key(op, C, s, stride, batch))]
    keys.append(classifier)
    return _unique(keys)


def genotype_keys(space: CellSpace, genotype: Genotype, batch: int = 1) -> list[tuple[str, OpKey]]:
    """(part, key) for every op of the final cell network of `genotype` in `space`."""
    if genotype.fixed_reduction:
        raise LatencyError("the latency tables have no keys for GDAS's fixed reduction cell: a network with it "
                           "can be exported and measured (`hwnas export`), not predicted")
    stem, pre, classifier = _cell_fixed_keys(space, batch)
    parts = [("stem", stem)]
    for (i, reduction, _, _, _, C, size), pre_keys in zip(_cells(space), pre):
        part = f"cell {i} ({'reduce' if reduction else 'normal'})"
        parts += [(part, k) for k in pre_keys]
        pairs = genotype.reduce if reduction else genotype.normal
        for op, state in pairs:
            stride = 2 if reduction and state < 2 else 1
            key = _cell_op_key(op, C, size if stride == 2 or not reduction else size // 2, stride, batch)
            if key:
                parts.append((part, key))
    parts.append(("classifier", classifier))
    return parts


def space_keys(space: RoutingSpace | CellSpace, batch: int = 1, dtype: str = "float32") -> list[OpKey]:
    from hwnas.kinds import kind_of

    return at_precision(kind_of(space).space_keys(space, batch), dtype)


def at_precision(keys: list[OpKey], dtype: str) -> list[OpKey]:
    """The same ops run at `dtype` (an architecture's keys are float32 until a table prices them)."""
    return [key if key.dtype == dtype else replace(key, dtype=dtype) for key in keys]


def _unique(keys: list[OpKey]) -> list[OpKey]:
    return list(dict.fromkeys(keys))
