"""The DenseNAS routing supernet (docs/methods.md: DenseNAS) for any routing space definition.

Block 0 is the stem's output. Every later block j has one head layer per candidate input i (an MBConv
mixed op mapping block i's width and resolution to block j's) and its stack layers (MBConv or skip
mixed ops). The input of block j is the sum over its sources i of softmax(betas_i)[j] * head_ji(out_i):
every routing path is evaluated in every forward pass. The final 1x1 block sums its branches the
same way. Search BN has no affine parameters, eps 1e-3, momentum 0.1.

Architecture weights live in the module state: `betas.<i>` over block i's outgoing connections,
`alphas.head.<j>.<i>` over the head ops of block j's branch from block i, `alphas.stack.<j>.<l>` over
the stack ops of layer l of block j.

Which ops a mixed op runs is set from outside before each forward pass (`MixedMobileOp.active`): the
DenseNAS method samples one op for weight steps and two for architecture steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.archs.routed import RoutedArch
from hwnas.ops.mobile import BN_EPS_MOBILE, ConvBNReLU6, mobile_op, parse_mbconv
from hwnas.spaces.definition import RoutingSpace
from hwnas.supernets.base import Supernet


def _search_bn(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
            m.eps = BN_EPS_MOBILE
    return module


class NestedMBConvs(nn.Module):
    """The MBConv candidates of one layer as slices of one set of weights (a "superkernel", as in
    Single-Path NAS and OFA): expansion t uses the first C_in * t hidden channels, kernel k the
    central k x k of the largest depthwise kernel. Each candidate keeps its own BN statistics.

    Why: with independent weights per candidate, each layer's sampled op is one of several unrelated
    random functions, and a supernet of a dozen such layers barely learns in a few hundred steps
    (on digits, 13% after 360 steps; the same space with nested weights 81% after 150). Candidates
    that share weights stay compatible, so the search compares trained ops within minutes on a CPU."""

    def __init__(self, names: list[str], C_in: int, C_out: int, stride: int):
        super().__init__()
        self.specs = [parse_mbconv(n) for n in names]
        self.C_in, self.stride = C_in, stride
        self.kmax = max(k for k, _ in self.specs)
        hidden = C_in * max(t for _, t in self.specs)
        self.expand = nn.Parameter(torch.empty(hidden, C_in, 1, 1))
        self.depthwise = nn.Parameter(torch.empty(hidden, 1, self.kmax, self.kmax))
        self.project = nn.Parameter(torch.empty(C_out, hidden, 1, 1))
        for weight in (self.expand, self.depthwise, self.project):
            nn.init.kaiming_normal_(weight, mode="fan_out")

        def bn(channels: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(channels, eps=BN_EPS_MOBILE, momentum=0.1, affine=False)

        self.bns = nn.ModuleList(nn.ModuleList([bn(C_in * t), bn(C_in * t), bn(C_out)]) for _, t in self.specs)
        self.residual = stride == 1 and C_in == C_out

    def run(self, index: int, x: torch.Tensor) -> torch.Tensor:
        (kernel, expansion), (bn_expand, bn_depthwise, bn_project) = self.specs[index], self.bns[index]
        hidden = self.C_in * expansion
        y = F.relu6(bn_expand(F.conv2d(x, self.expand[:hidden]))) if expansion != 1 else x
        crop = slice(self.kmax // 2 - kernel // 2, self.kmax // 2 + kernel // 2 + 1)
        y = F.conv2d(y, self.depthwise[:hidden, :, crop, crop], stride=self.stride, padding=kernel // 2, groups=hidden)
        y = bn_project(F.conv2d(F.relu6(bn_depthwise(y)), self.project[:, :hidden]))
        return x + y if self.residual else y


class MixedMobileOp(nn.Module):
    """Candidate ops of one layer; `active` holds the indices to run, weighted by `weights` (None: 1).
    With `nested`, the MBConv candidates share their weights (`NestedMBConvs`); skip stays its own."""

    def __init__(self, names: list[str], C_in: int, C_out: int, stride: int, nested: bool = False):
        super().__init__()
        self.names = list(names)
        if nested:
            mbconvs = [n for n in names if n != "skip_connect"]
            self.nested = NestedMBConvs(mbconvs, C_in, C_out, stride)
            self.ops = nn.ModuleList(_search_bn(mobile_op(n, C_in, C_out, stride, affine=False)) if n == "skip_connect"
                                     else _NestedCandidate(self.nested, mbconvs.index(n)) for n in names)
        else:
            self.ops = nn.ModuleList(_search_bn(mobile_op(n, C_in, C_out, stride, affine=False)) for n in names)
        self.active: list[int] = [0]
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.ops[i](x) for i in self.active]
        if self.weights is None:
            return outputs[0] if len(outputs) == 1 else sum(outputs)
        return sum(w * out for w, out in zip(self.weights, outputs))


class _NestedCandidate(nn.Module):
    """Candidate `index` of a `NestedMBConvs`, which its `MixedMobileOp` owns (so it is not registered here)."""

    def __init__(self, shared: NestedMBConvs, index: int):
        super().__init__()
        object.__setattr__(self, "shared", shared)
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.run(self.index, x)


class RoutingSupernet(Supernet):
    arch_weight_dicts = ("betas", "alphas")

    def __init__(self, space: RoutingSpace, num_classes: int, init_scale: float = 1e-3, nested: bool = False):
        super().__init__()
        self.space = space
        w0 = space.widths[0]
        self.stem = _search_bn(nn.Sequential(
            ConvBNReLU6(space.input_channels, w0, 3, space.stem_stride, affine=False),
            mobile_op(space.stem_op, w0, w0, 1, affine=False)))
        self.heads = nn.ModuleDict()
        self.stacks = nn.ModuleDict()
        for j in range(1, space.num_blocks):
            for i in space.sources(j):
                self.heads[f"{j}_{i}"] = MixedMobileOp(space.head_ops, space.width(i), space.width(j), space.stride(i, j),
                                                        nested)
            if space.stack_layers[j]:
                self.stacks[str(j)] = nn.ModuleList(
                    MixedMobileOp(space.stack_ops, space.width(j), space.width(j), 1, nested)
                    for _ in range(space.stack_layers[j]))
        final = space.final_block
        self.final = nn.ModuleDict({str(i): ConvBNReLU6(space.width(i), space.final_width, 1, 1, affine=False)
                                    for i in space.sources(final)})
        _search_bn(self.final)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(space.final_width, num_classes))

        # block -> [(source, index of the block among the source's targets)], computed once for forward
        self.inputs = {j: [(i, space.targets(i).index(j)) for i in space.sources(j)]
                       for j in range(1, space.final_block + 1)}
        self.betas = nn.ParameterDict({
            str(i): nn.Parameter(init_scale * torch.randn(len(space.targets(i))))
            for i in range(space.num_blocks)})
        self.alphas = nn.ParameterDict()
        for key in self.heads:
            self.alphas[f"head_{key}"] = nn.Parameter(init_scale * torch.randn(len(space.head_ops)))
        for j, layers in self.stacks.items():
            for layer in range(len(layers)):
                self.alphas[f"stack_{j}_{layer}"] = nn.Parameter(init_scale * torch.randn(len(space.stack_ops)))

    # ---- parameters ----
    def mixed_ops(self) -> dict[str, tuple[MixedMobileOp, nn.Parameter]]:
        """Every mixed op with its alphas, by alpha name."""
        ops = {f"head_{key}": op for key, op in self.heads.items()}
        ops.update({f"stack_{j}_{l}": op for j, layers in self.stacks.items() for l, op in enumerate(layers)})
        return {name: (op, self.alphas[name]) for name, op in ops.items()}

    def edge_probs(self, source: int) -> torch.Tensor:
        """softmax(betas) over the outgoing connections of block `source`, in `space.targets` order."""
        return F.softmax(self.betas[str(source)], dim=-1)

    def head_alphas(self, target: int, source: int) -> nn.Parameter:
        return self.alphas[f"head_{target}_{source}"]

    def stack_alphas(self, block: int) -> list[nn.Parameter]:
        return [self.alphas[f"stack_{block}_{l}"] for l in range(self.space.stack_layers[block])]

    # ---- forward: every routing path ----
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        space = self.space
        probs = {i: self.edge_probs(i) for i in range(space.num_blocks)}
        outputs = {0: self.stem(x)}
        for j in range(1, space.num_blocks):
            h = sum(probs[i][k] * self.heads[f"{j}_{i}"](outputs[i]) for i, k in self.inputs[j])
            for layer in self.stacks[str(j)] if str(j) in self.stacks else ():
                h = layer(h)
            outputs[j] = h
        h = sum(probs[i][k] * self.final[str(i)](outputs[i]) for i, k in self.inputs[space.final_block])
        return self.classifier(h)

    # ---- forward: one network of the space ----
    def forward_path(self, x: torch.Tensor, arch: RoutedArch) -> torch.Tensor:
        """The network `arch` with the supernet's weights: only its path's head and stack ops run, each at
        full weight (a kept stack op runs in the block's first stack layers; skipped layers are identity)."""
        h, source = self.stem(x), 0
        for block in arch.blocks:
            head = self.heads[f"{block.block}_{source}"]
            h = head.ops[head.names.index(block.head)](h)
            for layer, name in zip(self.stacks[str(block.block)] if block.stack else (), block.stack):
                h = layer.ops[layer.names.index(name)](h)
            source = block.block
        return self.classifier(self.final[str(source)](h))
