"""Quantization-aware fine-tuning (hwnas/qat.py): the folded, fake-quantized network, its QDQ file, and
the fine-tuning on a dataset."""

import numpy as np
import onnx
import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, disable_fake_quant, disable_observer

from hwnas.qat import fine_tuned, float_weights, prepared_for_qat


def _net() -> nn.Module:
    """conv-BN-ReLU6, depthwise conv-BN-ReLU6, pool, linear; batch norms with statistics of their own."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _onnx_outputs(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def test_the_prepared_network_folds_its_batch_norms_and_fake_quantizes_in_onnx_runtimes_scheme():
    net, x = _net(), torch.randn(8, 3, 16, 16)
    prepared = prepared_for_qat(net, x[:2])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2  # the trained network is untouched
    quantizers = [m for m in prepared.modules() if isinstance(m, FakeQuantize)]
    weights = [q for q in quantizers if q.qscheme == torch.per_channel_symmetric]
    assert len(weights) == 3 and all(q.dtype == torch.qint8 for q in weights)  # two convs and the linear layer
    assert all(q.dtype == torch.quint8 and q.qscheme == torch.per_tensor_affine
               for q in quantizers if q not in weights)
    # with fake quantization off, the folded network computes what the trained one does
    prepared.eval()
    prepared.apply(disable_observer)
    prepared.apply(disable_fake_quant)
    with torch.no_grad():
        assert torch.allclose(prepared(x), net(x), atol=1e-5)


def test_onnx_runtimes_quantizer_puts_the_fine_tuned_weights_on_the_grid_they_were_trained_on(tmp_path):
    from onnx import numpy_helper

    from hwnas.quantize import LADDER, prepare, quantize
    from hwnas.runtimes.onnx import export_onnx

    net, x = _net(), torch.randn(16, 3, 16, 16)
    prepared = prepared_for_qat(net, x[:2])
    prepared(x)  # one training-mode step of the observers: the weights' scales
    trained_on = {tuple(m.weight.shape): m.weight_fake_quant(m.weight).detach().numpy()
                  for m in prepared.modules() if hasattr(m, "weight_fake_quant")}
    export_onnx(float_weights(prepared, net), (1, 3, 16, 16), tmp_path / "tuned.onnx")
    prepare(tmp_path / "tuned.onnx", tmp_path / "prepared.onnx")
    quantize(tmp_path / "prepared.onnx", tmp_path / "int8.onnx", x.numpy(), LADDER[0])
    model = onnx.load(str(tmp_path / "int8.onnx"))
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    rounded = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and values.get(node.input[0], np.zeros(0)).dtype == np.int8:
            weight, scale = values[node.input[0]].astype(np.float32), values[node.input[1]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * weight.ndim
            shape[axis] = -1
            rounded[weight.shape] = weight * scale.reshape(shape)
    assert set(rounded) == set(trained_on) and len(rounded) == 3  # two convs and the linear layer
    for shape, weights in trained_on.items():
        np.testing.assert_allclose(rounded[shape], weights, rtol=0, atol=1e-6 * np.abs(weights).max())


def test_fine_tuning_trains_on_the_datasets_training_images_and_gives_a_float_folded_network():
    from hwnas.archs.routed import RoutedArch, RoutedBlock
    from hwnas.config import ModelConfig
    from hwnas.export import real_images
    from hwnas.train import build_model

    small = RoutedArch("densenas_32", tuple(RoutedBlock(b, "mbconv_k3_t3") for b in (1, 4, 7, 10, 13, 16)))
    torch.manual_seed(0)
    config = ModelConfig(dropout=0.0)
    net = {"arch": small, "model": build_model(small, config, 10, 3).eval(), "dataset": "digits",
           "model_cfg": config, "channels": 3, "size": 32}
    before = {k: v.clone() for k, v in net["model"].state_dict().items()}
    network, row = fine_tuned(net, (1, 3, 32, 32), epochs=1, data_root=None)
    assert row["epochs"] == 1 and row["training_images"] == 1293  # digits' 1437, a tenth held out
    assert 0.0 <= row["valid_acc"] <= 1.0 and row["train_seconds"] > 0
    assert not any(isinstance(m, (nn.BatchNorm2d, FakeQuantize)) for m in network.modules())  # float, folded
    x = torch.from_numpy(real_images("digits", 3, 32, "test", 8, None)[0])
    # the trained network itself is not changed; the fine-tuned one has moved away from it
    assert all(torch.equal(v, net["model"].state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        tuned = network(x)
        assert torch.isfinite(tuned).all() and not torch.allclose(tuned, net["model"](x), atol=1e-3)


def test_qat_epochs_without_int8_is_refused(tmp_path, capsys):
    from hwnas.cli import main

    assert main(["export", "--arch", "DARTS_V2", "--dataset", "digits", "--out", str(tmp_path / "m.onnx"),
                 "--qat-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--qat-epochs applies to an int8 export" in err
    assert not list(tmp_path.iterdir())
