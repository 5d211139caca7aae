"""Int8 remedies (hwnas/quantize.py) on small ONNX models whose quantization damage is known."""

import numpy as np
import pytest
import torch
from torch import nn

from hwnas.quantize import LADDER, Remedy, int8_with_remedies, layer_sensitivity, prepare
from hwnas.runtimes.onnx import export_onnx


def _net(fragile: bool) -> nn.Module:
    """conv -> ReLU -> conv -> ReLU -> pool -> linear. With `fragile`, the first conv's channel 0 is dead
    (zero after its ReLU) and the second conv weighs it 1000 in every output channel: nothing in float,
    but it sets the per-channel int8 scale, so the second conv's real weights round to zero."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    if fragile:
        with torch.no_grad():
            net[0].weight[0] = 0.0
            net[0].bias[0] = -1.0
            net[2].weight.mul_(10.0)  # the weights that carry the signal, about 1 (under half the int8 step of 7.9)
            net[2].weight[:, 0, 1, 1] = 1000.0
    return net.eval()


def _run(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


@pytest.fixture
def images():
    return np.random.default_rng(0).standard_normal((96, 1, 8, 8)).astype(np.float32)


def test_the_layer_whose_weights_int8_cannot_hold_is_the_most_sensitive(tmp_path, images):
    export_onnx(_net(fragile=True), (1, 1, 8, 8), tmp_path / "m.onnx")
    prepare(tmp_path / "m.onnx", tmp_path / "p.onnx")
    reference = _run(tmp_path / "m.onnx", images)
    ranked = layer_sensitivity(tmp_path / "p.onnx", images, LADDER[0], lambda p: _run(p, images), reference, tmp_path)
    assert len(ranked) == 3  # two convs and the linear layer
    convs = [name for name, _ in ranked if "Conv" in name]
    # the second conv hurts most; the linear layer, whose weights int8 holds, far less than either conv
    assert ranked[0][0] == sorted(convs)[-1] and "Gemm" in ranked[2][0] and ranked[1][1] > 100 * ranked[2][1]


def test_the_cheapest_remedy_within_the_drop_is_kept(tmp_path, images):
    export_onnx(_net(fragile=False), (1, 1, 8, 8), tmp_path / "m.onnx")
    labels = _run(tmp_path / "m.onnx", images).argmax(axis=1)  # the float network is right by definition
    result = int8_with_remedies(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", images[:64], (images[64:], labels[64:]),
                                _run, max_drop=0.5)
    assert result["remedy"] == "per-channel" and len(result["tried"]) == 1 and result["met_on_selection"]
    assert result["selection_float_acc"] == 1.0 and result["tried"][0]["calibration_images"] == 64
    assert (tmp_path / "m.int8.onnx").is_file()


def test_when_nothing_meets_the_drop_every_remedy_is_tried_in_order(tmp_path, images):
    export_onnx(_net(fragile=True), (1, 1, 8, 8), tmp_path / "m.onnx")
    labels = _run(tmp_path / "m.onnx", images).argmax(axis=1)
    result = int8_with_remedies(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", images[:64], (images[64:], labels[64:]),
                                _run, max_drop=-1.0)  # a drop below zero cannot be met
    names = [t["remedy"] for t in result["tried"]]
    assert names == [r.name for r in LADDER] + ["float-sensitive", "float-sensitive"]
    assert [len(t["float_layers"]) for t in result["tried"]] == [0, 0, 0, 1, 2]  # 1, 2 of the 3 layers
    least = min(result["tried"], key=lambda t: t["selection_drop"])
    assert not result["met_on_selection"] and result["remedy"] == least["remedy"]
    assert result["tried"][1]["reduce_range"] and result["tried"][2]["calibrate"] == "Percentile"


def test_fine_tuning_comes_after_post_training_quantization_and_before_float_layers(tmp_path, images):
    net = _net(fragile=True)
    export_onnx(net, (1, 1, 8, 8), tmp_path / "m.onnx")
    labels = _run(tmp_path / "m.onnx", images).argmax(axis=1)
    calls = []

    def fine_tune(path):  # no epochs: the network as it was, so the remedy is `per-channel` again
        export_onnx(net, (1, 1, 8, 8), path)
        calls.append(path)
        return {"epochs": 0, "training_images": 0}

    result = int8_with_remedies(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", images[:64], (images[64:], labels[64:]),
                                _run, max_drop=-1.0, fine_tune=fine_tune)
    names = [t["remedy"] for t in result["tried"]]
    assert names == [r.name for r in LADDER] + ["qat", "float-sensitive", "float-sensitive"] and len(calls) == 1
    qat = result["tried"][3]
    assert qat["epochs"] == 0 and qat["float_layers"] == [] and not qat["reduce_range"]
    assert qat["calibrate"] == "MinMax" and qat["calibration_images"] == 64
    # the fine-tuned weights go through the per-channel quantizer: unchanged weights give its accuracy
    assert qat["selection_acc"] == result["tried"][0]["selection_acc"]


def test_keeping_the_fragile_layer_in_float_recovers_the_float_outputs(tmp_path, images):
    from hwnas.quantize import quantize

    export_onnx(_net(fragile=True), (1, 1, 8, 8), tmp_path / "m.onnx")
    prepare(tmp_path / "m.onnx", tmp_path / "p.onnx")
    reference = _run(tmp_path / "m.onnx", images)
    ranked = layer_sensitivity(tmp_path / "p.onnx", images, LADDER[0], lambda p: _run(p, images), reference, tmp_path)
    errors = {}
    # both convs touch the dead channel (the first writes it, the second weighs it): kept in float, the
    # network is as good as float; quantized, it is not
    sensitive = tuple(name for name, _ in ranked[:2])
    for kept in ((), sensitive):
        quantize(tmp_path / "p.onnx", tmp_path / "q.onnx", images, Remedy("x", keep_float=kept))
        errors[kept] = float(np.mean((_run(tmp_path / "q.onnx", images) - reference) ** 2))
    assert errors[sensitive] < errors[()] / 100


def test_an_int8_table_measures_quantized_ops_and_prices_an_architecture_at_int8(tmp_path, capsys):
    import random

    import onnx

    from hwnas.cli import main
    from hwnas.latency.keys import space_keys
    from hwnas.latency.kit import build_kit
    from hwnas.latency.networks import sample_arch
    from hwnas.latency.table import load_table
    from hwnas.latency.validate import predict, validate
    from latency_helpers import load_tiny_space

    tiny = load_tiny_space(tmp_path)
    manifest = build_kit(tiny, tmp_path / "kit", dtype="int8")
    assert manifest["dtype"] == "int8" and all(e["key"].endswith(":int8") for e in manifest["entries"])
    ops = {node.op_type for node in onnx.load(str(tmp_path / "kit" / manifest["entries"][0]["file"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # the op runs as the int8 export runs it
    net_ops = {n.op_type for n in onnx.load(str(tmp_path / "kit" / manifest["networks"][0]["file"])).graph.node}
    assert "QuantizeLinear" in net_ops and all(op.endswith(":int8") for op in manifest["networks"][0]["ops"])

    table_path = tmp_path / "int8.csv"
    assert main(["profile", "--space", str(tmp_path / "tiny.yaml"), "--out", str(table_path), "--precision", "int8",
                 "--runs", "10", "--warmup", "2", "--quiet"]) == 0
    table = load_table(table_path)
    assert table.dtype == "int8" and set(table.rows.index) == {k.name for k in space_keys(tiny, 1, "int8")}
    arch = sample_arch(tiny, random.Random(0))  # its keys are float32 until the table prices them
    assert predict(table, tiny, arch)["predicted_ms"] > 0
    report = validate(table_path, tmp_path / "tiny.yaml", samples=3, quiet=True)
    assert all(net["measured_ms"] > 0 for net in report["networks"])

    capsys.readouterr()
    assert main(["profile", "--space", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "t.csv"), "--runtime",
                 "torch", "--precision", "int8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "int8 tables come from the runtimes that quantize (ort, executorch, litert)" in err
    assert err.count("\n") == 1 and not (tmp_path / "t.csv").exists()


def test_an_int8_run_needs_a_runtime_that_quantizes_and_a_drop_needs_int8(monkeypatch):
    from hwnas.errors import ConfigError
    from hwnas.pipeline import load_run_config
    from hwnas.runtimes.litert import LiteRtRuntime

    assert load_run_config(None, ["export.quantize=int8", "export.max_accuracy_drop=0.5"]).export.max_accuracy_drop == 0.5
    assert load_run_config(None, ["runtime=litert", "export.quantize=int8"]).runtime == "litert"
    monkeypatch.setattr(LiteRtRuntime, "deploy_precisions", ("float32",))  # a runtime without int8 files
    with pytest.raises(ConfigError, match="the litert runtime has no int8 files; deploy int8 with a runtime that "
                                          r"quantizes \(ort, executorch\)"):
        load_run_config(None, ["runtime=litert", "export.quantize=int8"])
    with pytest.raises(ConfigError, match="max_accuracy_drop applies to an int8 export"):
        load_run_config(None, ["export.max_accuracy_drop=2"])
    assert load_run_config(None, ["export.quantize=int8"]).export.qat_epochs == 2
    assert load_run_config(None, ["export.quantize=int8", "export.qat_epochs=0"]).export.qat_epochs == 0
    with pytest.raises(ConfigError, match="qat_epochs applies to an int8 export"):
        load_run_config(None, ["export.qat_epochs=3"])
    with pytest.raises(ConfigError, match="qat_epochs"):
        load_run_config(None, ["export.quantize=int8", "export.qat_epochs=-1"])


def test_a_drop_without_int8_is_refused_before_anything_is_written(tmp_path, capsys):
    from hwnas.cli import main

    assert main(["export", "--arch", "DARTS_V2", "--dataset", "digits", "--out", str(tmp_path / "m.onnx"),
                 "--max-accuracy-drop", "2"]) == 2
    err = capsys.readouterr().err
    assert "--quantize int8" in err and err.count("\n") == 1 and not any(tmp_path.iterdir())
