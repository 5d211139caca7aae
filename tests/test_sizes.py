"""Published parameter counts (exact) and multiply-adds (within 0.5%) of docs/methods.md: Published cells."""

import json

import pytest

from hwnas.cli import main
from hwnas.info import arch_info, supernet_info

# name: (CIFAR params, CIFAR MMACs or None, ImageNet params, ImageNet MMACs, ImageNet C)
PUBLISHED = {
    "DARTS_V1": (3_169_414, 501.0, 4_510_432, 505.9, 48),
    "DARTS_V2": (3_349_342, 528.4, 4_718_752, 529.9, 48),
    "PC_DARTS_cifar": (3_634_678, 556.7, 5_270_560, 571.1, 48),
    "PC_DARTS_image": (3_721_510, None, 5_342_464, 581.6, 48),
    "PDARTS": (3_433_798, 532.2, 4_944_352, 542.8, 48),
    "GDAS_V1": (3_368_782, 519.4, 5_345_075, 581.0, 50),
    "GDAS_F1": (2_543_014, 402.8, 4_430_386, 496.7, 52),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_cifar_network_size(name):
    params, macs, *_ = PUBLISHED[name]
    info = arch_info(name, "cifar10")
    assert info["params"] == params
    if macs is not None:
        assert info["macs"] / 1e6 == pytest.approx(macs, rel=0.005)


@pytest.mark.parametrize("name", PUBLISHED)
def test_imagenet_network_size(name):
    *_, params, macs, C = PUBLISHED[name]
    info = arch_info(name, "imagenet", init_channels=C)
    assert info["params"] == params
    assert info["macs"] / 1e6 == pytest.approx(macs, rel=0.005)


def test_darts_supernet_size():
    info = supernet_info("darts")
    assert info["params"] == 1_930_618
    assert info["arch_params"] == 2 * 14 * 8


def test_info_cli_json(capsys):
    assert main(["info", "--arch", "DARTS_V2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 3_349_342 and out["macs"] > 0


def test_info_cli_supernet_json(capsys):
    assert main(["info", "--supernet", "darts", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 1_930_618


@pytest.mark.parametrize("argv", [
    ["info", "--arch", "NOPE"],
    ["info", "--supernet", "darts", "--layers", "2"],
    ["info", "--arch", "DARTS_V2", "--init-channels", "-4"],
    ["info"],
])
def test_info_bad_input_is_one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwnas: error:") and "\n" not in err
