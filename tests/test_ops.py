import pytest
import torch
from torch import nn

from hwnas.models.cell_net import FixedReductionCell, NetworkCIFAR
from hwnas.genotypes import ZOO
from hwnas.ops import OPS, FactorizedReduce, PRIMITIVES, drop_path
from hwnas.spaces.cell import MixedOp


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
