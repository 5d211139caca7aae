"""Routing spaces derived from others (width, input size, depth), and the nested candidate weights."""

import pytest
import torch

from hwnas.cli import main
from hwnas.errors import ConfigError
from hwnas.latency.keys import routing_space_keys
from hwnas.ops.mobile import MBConv
from hwnas.spaces.definition import derive_space, load_space, round_width
from hwnas.supernets.routing import MixedMobileOp, NestedMBConvs, RoutingSupernet

BASE = load_space("densenas_224")


def test_round_width_is_mobilenets_rule():
    # nearest multiple of 8, at least 8, never more than 10% below the exact width
    assert [round_width(w) for w in (4, 11.9, 12, 19.9, 20, 44, 99.2, 496)] == [8, 16, 16, 24, 24, 48, 96, 496]


def test_deriving_the_224_space_at_32_pixels_gives_densenas_32():
    """The shipped 32x32 space was written by hand: the derivation rule (drop the earliest
    downsamplings until the last feature map keeps 4 pixels) reproduces it exactly."""
    derived = derive_space(BASE, "densenas_32", input_size=32, num_classes=10)
    assert derived.model_dump() == load_space("densenas_32").model_dump()
    assert routing_space_keys(derived) == routing_space_keys(load_space("densenas_32"))


def test_input_size_drops_the_earliest_downsamplings():
    assert derive_space(BASE, "s", input_size=96).sizes == [96, 48, 24, 24, 24, 12, 12, 12, 12, 12, 12, 6, 6, 6, 6, 6, 6]
    assert derive_space(BASE, "s", input_size=28).sizes[:5] == [28, 28, 28, 28, 28]
    assert derive_space(BASE, "s", input_size=28).sizes[-1] == 7
    with pytest.raises(ValueError, match="no downsampling"):
        derive_space(BASE, "s", input_size=97)


def test_small_space_widths_merges_and_connections():
    small = load_space("densenas_32_small")
    # x0.25 of [16, 24, 32, 40, 48, 56, 64, 72, 96, 112, 128, 160, 176, 192, 320, 352, 384], rounded to 8;
    # blocks rounding left alike within a stage (32/40 -> 8/16/16, 56/64 -> 16/16, ...) merged
    assert small.widths == [8, 8, 8, 16, 16, 24, 24, 32, 40, 48, 80, 88, 96]
    assert small.sizes == [32, 32, 16, 16, 8, 8, 8, 8, 4, 4, 4, 4, 4]
    assert small.stages == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6]
    assert small.stack_layers == [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert small.final_width == 496 and small.max_connections == 3 and small.num_classes == 10
    assert len(small.connections()) == 30
    assert len(routing_space_keys(small)) == 192


def test_space_derive_command_writes_a_file_that_loads_back(tmp_path, capsys):
    out = tmp_path / "my_space.yaml"
    assert main(["space", "derive", "--from", "densenas_224", "--input-size", "96", "--width", "0.5",
                 "--out", str(out)]) == 0
    space = load_space(out)
    assert space.name == "my_space" and space.input_size == 96 and space.final_width == 992
    assert space.model_dump() == derive_space(BASE, "my_space", input_size=96, width=0.5).model_dump()
    # one line of YAML does the same
    (tmp_path / "one_line.yaml").write_text("name: my_space\nderive: {from: densenas_224, input_size: 96, width: 0.5}\n")
    assert load_space(tmp_path / "one_line.yaml").model_dump() == space.model_dump()
    capsys.readouterr()
    before = out.read_text()
    assert main(["space", "derive", "--from", "densenas_224", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == before


@pytest.mark.parametrize("text, message", [
    ("name: a\nderive: {from: densenas_224, width: -1}\n", "width"),
    ("name: a\nderive: {from: densenas_224, colour: red}\n", "colour"),
    ("name: a\nderive: {from: darts_cifar10}\n", "only routing spaces"),
    ("name: a\nderive: {from: densenas_224, input_size: 97}\n", "no downsampling"),
])
def test_bad_derivations_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_space(path)


def test_nested_candidates_are_slices_of_one_superkernel():
    """Candidate (k, t) of a nested layer computes exactly an MBConv whose weights are the central
    k x k of the depthwise kernel and the first C_in * t hidden channels."""
    torch.manual_seed(0)
    names = ["mbconv_k3_t3", "mbconv_k5_t6", "mbconv_k7_t3"]
    nested = NestedMBConvs(names, 8, 8, 1).eval()
    x = torch.randn(2, 8, 6, 6)
    for index, (kernel, expansion) in enumerate([(3, 3), (5, 6), (7, 3)]):
        plain = MBConv(8, 8, kernel, expansion, 1, affine=False).eval()
        hidden, crop = 8 * expansion, slice(3 - kernel // 2, 3 + kernel // 2 + 1)
        convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            convs[0].weight.copy_(nested.expand[:hidden])
            convs[1].weight.copy_(nested.depthwise[:hidden, :, crop, crop])
            convs[2].weight.copy_(nested.project[:, :hidden])
        torch.testing.assert_close(nested.run(index, x), plain(x), rtol=1e-5, atol=1e-5)


def test_nested_supernet_shares_weights_and_keeps_skip_apart():
    small = load_space("densenas_32_small")
    independent, nested = RoutingSupernet(small, 10), RoutingSupernet(small, 10, nested=True)
    count = lambda model: sum(p.numel() for p in model.weight_parameters())  # noqa: E731
    assert count(nested) < count(independent) / 2
    assert [p.numel() for p in independent.arch_parameters()] == [p.numel() for p in nested.arch_parameters()]
    layer = nested.stacks["1"][0]
    assert isinstance(layer, MixedMobileOp) and layer.names[-1] == "skip_connect"
    x = torch.randn(2, 8, 32, 32)
    layer.active = [len(layer.names) - 1]
    assert torch.equal(layer(x), x)  # skip at equal widths is the identity
    layer.active, layer.weights = [0, 1], torch.tensor([0.25, 0.75])
    expected = 0.25 * layer.nested.run(0, x) + 0.75 * layer.nested.run(1, x)
    torch.testing.assert_close(layer(x), expected)
