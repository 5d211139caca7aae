import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwnas.models.cell_net import FixedReductionCell, NetworkCIFAR
from hwnas.archs.genotype import ZOO
from hwnas.ops.cell import OPS, FactorizedReduce, PRIMITIVES, drop_path
from hwnas.ops.kernels import DilatedDepthwiseConv, PointwiseConvBN, SameDilatedDepthwise
from hwnas.supernets.cell import MixedOp


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_keeps_channels_and_applies_stride(name, stride):
    op = OPS[name](8, stride, True)
    out = op(torch.randn(2, 8, 9, 9))  # odd size: factorized reduce must cope
    assert out.shape == (2, 8, 5 if stride == 2 else 9, 5 if stride == 2 else 9)


def test_conv_ops_have_no_bias_and_search_bn_is_not_affine():
    for name in PRIMITIVES:
        for module in OPS[name](8, 1, False).modules():
            if isinstance(module, nn.Conv2d):
                assert module.bias is None
            if isinstance(module, nn.BatchNorm2d):
                assert not module.affine


def test_factorized_reduce_shifted_branch():
    fr = FactorizedReduce(1, 2, affine=False).eval()
    with torch.no_grad():
        fr.conv_1.weight.fill_(1.0)
        fr.conv_2.weight.fill_(1.0)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = torch.cat([fr.conv_1(x), fr.conv_2(nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1)))], 1)
    assert out[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]   # even pixels
    assert out[0, 1].tolist() == [[5.0, 7.0], [13.0, 15.0]]  # shifted by one pixel


def test_mixed_op_is_the_weighted_sum_and_skips_none():
    torch.manual_seed(0)
    mixed = MixedOp(4, 1, PRIMITIVES).eval()
    x = torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(8), 0)
    want = sum(w[k] * (OPS_ref(mixed, name)(x)) for k, name in enumerate(PRIMITIVES) if name != "none")
    torch.testing.assert_close(mixed(x, w), want)
    assert "none" not in mixed.ops
    # all weight on `none`: output is zero
    assert mixed(x, torch.eye(8)[0]).abs().max() == 0


def OPS_ref(mixed, name):
    """The op as the reference defines it (with its own leading ReLU) from the mixed op's modules."""
    op = mixed.ops[name]
    return (lambda x: op(torch.relu(x))) if name in mixed.takes_relu else op


def test_drop_path_keeps_expectation_and_zeroes_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    out = drop_path(x, 0.3)
    per_sample = out.view(4000, -1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.7).all(1)).all()
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)
    assert drop_path(x, 0.0) is x


def test_fixed_reduction_cell_halves_and_outputs_4c():
    cell = FixedReductionCell(24, 24, 16, reduction_prev=False)
    out = cell(torch.randn(2, 24, 8, 8), torch.randn(2, 24, 8, 8), drop_prob=0.0)
    assert out.shape == (2, 64, 4, 4)


def test_cifar_network_train_returns_aux_and_eval_logits():
    net = NetworkCIFAR(ZOO["DARTS_V2"], C=8, num_classes=10, layers=5, auxiliary=True)
    net.drop_path_prob = 0.2
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 10)
    net.eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [10, 8, 7])  # 8: 5x5 weight gradient by taps; 7: the plain conv
@pytest.mark.parametrize("channels_last", [True, False])
def test_dilated_depthwise_conv_trains_with_the_plain_convs_numbers(kernel, stride, size, channels_last):
    """Output, input gradient and weight gradient equal F.conv2d's (float64, to rounding)."""
    torch.manual_seed(0)
    conv = DilatedDepthwiseConv(4, kernel, stride, 2 * (kernel // 2), 2).double()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 4, size, size, dtype=torch.float64).to(memory_format=fmt).requires_grad_()
    ref = F.conv2d(x, conv.weight, None, stride, 2 * (kernel // 2), 2, 4)
    out = conv(x)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (x, conv.weight), grad)
    got = torch.autograd.grad(out, (x, conv.weight), grad)
    first_two_nodes = [out.grad_fn.name()] + [f.name() for f, _ in out.grad_fn.next_functions if f is not None]
    if stride == 2:  # undilated conv of the every-other-pixel slice
        assert "SliceBackward0" in first_two_nodes
    elif size % 2 == 0:
        assert first_two_nodes[0] == "SameDilatedDepthwiseBackward"
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel, size", [(3, 6), (5, 6), (5, 10)])  # 5x5 on a small plane: by taps
def test_dilated_depthwise_conv_second_derivatives_are_exact(kernel, size):
    """The unrolled DARTS check differentiates through the backward (create_graph)."""
    torch.manual_seed(0)
    conv = DilatedDepthwiseConv(2, kernel, 1, 2 * (kernel // 2), 2).double()
    x = torch.randn(2, 2, size, size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: SameDilatedDepthwise.apply(x, w, 2), (x, conv.weight))


def test_dilated_depthwise_conv_evaluates_and_exports_as_one_dilated_conv(tmp_path):
    """Outside training the plain conv runs: ONNX graphs (and so latency keys) are unchanged."""
    import onnx
    from hwnas.runtimes.onnx import export_onnx

    op = OPS["dil_conv_5x5"](4, 1, True)
    export_onnx(op, (1, 4, 8, 8), tmp_path / "dil.onnx")
    convs = [n for n in onnx.load(tmp_path / "dil.onnx").graph.node if n.op_type == "Conv"]
    dilations = [list(a.ints) for n in convs for a in n.attribute if a.name == "dilations"]
    assert dilations == [[2, 2], [1, 1]]  # the depthwise 5x5 dilated, then the pointwise


@pytest.mark.parametrize("affine, frozen", [(False, False), (True, False), (False, True)])
def test_pointwise_conv_bn_trains_with_the_unfused_numbers_and_keeps_less(affine, frozen):
    """The fused 1x1 conv + BN gives the unfused outputs, gradients and running statistics, and keeps
    one activation fewer for backward (frozen: the architecture step, where it keeps its output)."""
    torch.manual_seed(0)
    fused = OPS["dil_conv_3x3"](4, 1, affine).double()
    for p in fused.parameters():
        p.requires_grad_(not frozen)
    plain = copy.deepcopy(fused)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    saved = {}
    for name, op in (("fused", fused), ("plain", plain)):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            out = op(x) if name == "fused" else op[3](op[2](op[1](op[0](x))))
            kept_by_consumer = out * 2.0 if not frozen else out * x.new_tensor(2.0, requires_grad=True)
        grads = torch.autograd.grad(kept_by_consumer, [x, *(p for p in op.parameters() if p.requires_grad)],
                                    torch.cos(out))
        saved[name] = (out, grads, sum(n for n in sizes if n == x.numel()))
    torch.testing.assert_close(saved["fused"][0], saved["plain"][0], rtol=0, atol=1e-12)
    for g, w in zip(saved["fused"][1], saved["plain"][1]):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    assert saved["fused"][2] == saved["plain"][2] - x.numel()
    for a, b in zip(fused.buffers(), plain.buffers()):
        assert torch.equal(a, b)  # running mean, var and batch count updated alike


def test_pointwise_conv_bn_second_derivatives_are_exact():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 2, 1, bias=False).double(), nn.BatchNorm2d(2).double()
    z = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda z, w, g, b: PointwiseConvBN.apply(z, w, g, b, None, None, 0.1, 1e-5),
                                        (z, conv.weight, bn.weight, bn.bias))
