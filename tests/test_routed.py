"""Routed (DenseNAS) architectures as data and their final networks."""

import json

import pytest

from hwnas.cli import main
from hwnas.errors import ArchitectureError
from hwnas.models import count_macs, count_parameters
from hwnas.models.routed_net import RoutedNetwork
from hwnas.archs.routed import ROUTED_ZOO, RoutedArch
from hwnas.kinds import load_arch
from hwnas.runs import write_json
from hwnas.spaces.definition import load_space


def test_densenas_c_has_the_published_size():
    space = load_space("densenas_224")
    model = RoutedNetwork(space, ROUTED_ZOO["DenseNAS-C"])
    # docs/methods.md: DenseNAS: 6.13 M parameters, 360.8 M multiply-adds with a 1000-class classifier
    assert count_parameters(model) == 6_134_144
    assert count_macs(model, (3, 224, 224)) == 360_808_256


def test_densenas_c_prints_in_the_published_block_format():
    text = ROUTED_ZOO["DenseNAS-C"].format(load_space("densenas_224")).splitlines()
    assert [line.split()[0] for line in text] == ["[16,16]", "[16,24]", "[24,48]", "[48,72]", "[72,128]",
                                                  "[128,160]", "[160,176]", "[176,384]", "[384,1984]"]
    assert text[5].split() == ["[128,160]", "mbconv_k3_t6", "[mbconv_k7_t3,", "mbconv_k5_t6,", "mbconv_k7_t3]",
                               "stride", "2"]
    assert text[-1].split() == ["[384,1984]", "conv1_1"]


def test_routed_arch_json_round_trip(tmp_path):
    arch = ROUTED_ZOO["DenseNAS-C"]
    write_json(tmp_path / "a.json", arch.to_dict())
    assert load_arch(tmp_path / "a.json", "routing") == arch
    assert RoutedArch.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
    with pytest.raises(ArchitectureError, match="not a routed architecture"):
        RoutedArch.from_dict({"space": "densenas_224"})


def test_routed_network_on_the_32_space_runs():
    import torch

    space = load_space("densenas_32")
    arch = RoutedArch.from_dict({"space": "densenas_32", "blocks": [
        {"block": 1, "head": "mbconv_k3_t3"}, {"block": 4, "head": "mbconv_k5_t6", "stack": ["mbconv_k3_t3"]},
        {"block": 7, "head": "mbconv_k3_t3"}, {"block": 10, "head": "mbconv_k3_t3"},
        {"block": 13, "head": "mbconv_k7_t3"}, {"block": 16, "head": "mbconv_k3_t6"}]})
    model = RoutedNetwork(space, arch).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_info_for_a_routed_architecture(capsys):
    assert main(["info", "--arch", "DenseNAS-C", "--dataset", "imagenet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 6_134_144 and result["input"] == "3x224x224"
    assert "[176,384]" in result["arch_text"]


def test_densenas_supernet_info_counts_every_choice(capsys):
    assert main(["info", "--supernet", "densenas", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # 54 connections (betas), 51 head layers x 6 MBConvs, 13 blocks x 3 stack layers x 7 ops
    assert result["arch_params"] == 54 + 51 * 6 + 13 * 3 * 7
    assert result["input"] == "3x32x32"
