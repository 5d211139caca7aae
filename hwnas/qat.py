"""Quantization-aware fine-tuning (QAT): the int8 remedy for a network that post-training quantization
leaves more than the allowed accuracy drop away from float, for ONNX Runtime and ExecuTorch.

The trained network's batch norms are folded into its convolutions first (as the runtimes fold them
before they quantize), then torch.ao's FX QAT flow puts fake quantization where ONNX Runtime's static
quantization puts real quantization, on its grid: int8 weights symmetric per output channel over
[-127, 127] with the scale of the weights' current extremes, and uint8 activations with min-max ranges.
A few epochs of the shared training loop at a low learning rate let the weights settle where int8
rounding costs the least. The fine-tuned float network then goes back to each runtime's own quantizer
(the `per-channel` remedy of hwnas/quantize.py; XNNPACKQuantizer, whose weights lie on the same grid):
it rounds the weights to the grid they were trained on, and it places the quantize/dequantize pairs
where its int8 kernels want them. (The fake-quantized graph exported as it is runs in ONNX Runtime too,
but with a pair after every activation it was 1.4x slower than the post-training file.)
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwnas.config import AugmentConfig, DataConfig, ModelConfig, SGDConfig, TrainConfig, TrainLoopConfig

QAT_IMAGES = 8000  # training images the fine-tuning sees per epoch, at most
QAT_LR = 0.002  # a tenth or less of the recipes' rates: the weights move within their rounding steps


def _qconfig():
    from torch.ao.quantization import (FakeQuantize, MovingAverageMinMaxObserver,
                                       MovingAveragePerChannelMinMaxObserver, QConfig)

    activations = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                         dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    # averaging_constant 1: the scale of the weights as they are now, as the runtime's quantizer will take it
    weights = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, averaging_constant=1.0,
                                     quant_min=-127, quant_max=127, dtype=torch.qint8,
                                     qscheme=torch.per_channel_symmetric, ch_axis=0)
    return QConfig(activation=activations, weight=weights)


def folded(model: nn.Module) -> nn.Module:
    """A copy of `model` with its batch norms folded into its convolutions, traced in eval mode (so no
    auxiliary head and no drop path); `model` itself is not changed."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def prepared_for_qat(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """`folded(model)` with fake quantization in ONNX Runtime's int8 scheme, in training mode."""
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that FX quantization moves to torchao
        return prepare_qat_fx(folded(model).train(), QConfigMapping().set_global(_qconfig()), (example,))


def float_weights(prepared: nn.Module, model: nn.Module) -> nn.Module:
    """`folded(model)` with the weights `prepared` (from prepared_for_qat(model)) was fine-tuned to: the
    network the runtimes' quantizers take. QAT keeps each layer's path and parameter names."""
    network = folded(model)
    tuned = prepared.state_dict()
    network.load_state_dict({name: tuned[name] for name in network.state_dict()})
    return network.eval()


def fine_tune_config(dataset: str, image_size: int, gray_as_rgb: bool, model: ModelConfig, epochs: int,
                     data_root: str | None) -> TrainConfig:
    """The fine-tuning recipe: a few epochs of SGD at a low, cosine-decaying rate, no augmentation (the
    network has been trained; only int8 is new to it), a tenth of the images held out."""
    return TrainConfig(
        seed=0, device="cpu",
        data=DataConfig(dataset=dataset, root=data_root, image_size=image_size, channels=3 if gray_as_rgb else None,
                        train_subset=QAT_IMAGES, augment=AugmentConfig()),
        model=model,
        train=TrainLoopConfig(epochs=epochs, batch_size=64, optimizer=SGDConfig(lr=QAT_LR, lr_min=0.0, momentum=0.9,
                                                                                weight_decay=0.0),
                              schedule="cosine", grad_clip=None, auxiliary_weight=0.0, drop_path_prob=0.0,
                              valid_portion=0.1))


def fine_tuned(net: dict[str, Any], input_shape: tuple[int, ...], epochs: int,
               data_root: str | None) -> tuple[nn.Module, dict[str, Any]]:
    """`net` (resolve_network's dict) fine-tuned with fake int8 for `epochs` on its training images, as a
    float network with folded batch norms, and the fine-tuning's figures."""
    from hwnas.export import DATASET_SHAPES
    from hwnas.runs import RunDir
    from hwnas.train import Trainer

    gray_as_rgb = DATASET_SHAPES[net["dataset"]][1] == 1 and net["channels"] == 3
    config = fine_tune_config(net["dataset"], net["size"], gray_as_rgb, net["model_cfg"], epochs, data_root)
    prepared = prepared_for_qat(net["model"], torch.randn(2, *input_shape[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.prepare(Path(tmp) / "qat", {"qat_epochs": epochs}, resume=False)
        trainer = Trainer(config, net["arch"], run, quiet=True, model=prepared)
        trainer.fit()
    last = trainer.history[-1]
    return float_weights(trainer.model, net["model"]), {
        "epochs": epochs, "training_images": len(trainer.train_idx), "learning_rate": QAT_LR,
        "valid_acc": last["valid_acc"], "train_seconds": round(sum(r["seconds"] for r in trainer.history), 1)}
