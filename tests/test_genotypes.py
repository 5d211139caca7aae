import json

import pytest

from hwnas.errors import ArchitectureError
from hwnas.archs.genotype import ZOO, Genotype
from hwnas.kinds import load_arch
from hwnas.runs import write_json


@pytest.mark.parametrize("name", list(ZOO))
def test_json_round_trip(name, tmp_path):
    path = tmp_path / "arch.json"
    write_json(path, ZOO[name].to_dict())
    assert load_arch(path, "cell") == ZOO[name]


def test_zoo_has_published_cells():
    assert set(ZOO) >= {"DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PC_DARTS_image", "PDARTS", "GDAS_V1",
                        "GDAS_F1", "NASNet", "AmoebaNet"}
    assert ZOO["GDAS_F1"].fixed_reduction and not ZOO["DARTS_V2"].fixed_reduction
    assert ZOO["DARTS_V2"].normal[7] == ("dil_conv_3x3", 2)
    assert ZOO["NASNet"].reduce_concat == (4, 5, 6)


def test_readable_print():
    text = str(ZOO["DARTS_V2"])
    assert "node 5 = skip_connect(0) + dil_conv_3x3(2)" in text
    assert "fixed (GDAS FRC)" in str(ZOO["GDAS_F1"])


def _data(**changes):
    data = ZOO["DARTS_V2"].to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize("data, message", [
    (_data(normal=[["sep_conv_9x9", 0], ["skip_connect", 1]] * 4), "unknown op 'sep_conv_9x9'"),
    (_data(normal=[["sep_conv_3x3", 0], ["sep_conv_3x3", 2]] + [["skip_connect", 0]] * 6), "node 2 takes input 2"),
    (_data(normal=[["sep_conv_3x3", 0]] * 3), "two (op, input) pairs per node"),
    (_data(normal=[["none", 0]] * 8), "`none` cannot be a chosen op"),
    (_data(normal_concat=[2, 9]), "concat"),
    (_data(colour="red"), "unknown keys"),
    (_data(normal=[["sep_conv_3x3", "0"]] * 8), "malformed"),
])
def test_invalid_genotypes_are_rejected(data, message):
    with pytest.raises(ArchitectureError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Genotype.from_dict(data)


def test_bad_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        load_arch(bad, "cell")
    with pytest.raises(ArchitectureError, match="unknown architecture"):
        load_arch(tmp_path / "missing.json", "cell")
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ArchitectureError, match="expected a JSON object"):
        load_arch(bad, "cell")
