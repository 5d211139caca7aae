"""LiteRT (TensorFlow Lite) with its XNNPACK CPU delegate: `.tflite` files converted by litert-torch,
timed by profilers/litert_runner.py. The input stays NCHW, as PyTorch gives it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwnas.runtimes.base import FLOAT32, FileRuntime, RuntimeMissing, native_output_silenced, pt2e_quantized
from profilers import litert_runner


class LiteRtRuntime(FileRuntime):
    name = "litert"
    title = "LiteRT"
    table_name = "litert"
    suffix = ".tflite"
    extra = "litert"
    device = litert_runner.RUNTIME
    opset = None
    precisions = (FLOAT32, "int8")
    deploy_precisions = (FLOAT32, "int8")
    int8_scheme = ("litert-torch's PT2EQuantizer: symmetric per-channel int8 weights, int8 activations; "
                   "a fully int8 model whose input and output are int8 with their scale and zero point")

    def save(self, module: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
        litert_torch = self._converter()
        with warnings.catch_warnings(), torch.no_grad(), native_output_silenced():
            warnings.simplefilter("ignore")
            litert_torch.convert(module.eval(), (torch.randn(*input_shape),)).export(str(path))

    def save_quantized(self, module: nn.Module, input_shape: tuple[int, ...], path: Path,
                       calibration: np.ndarray | None = None) -> None:
        litert_torch = self._converter()
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        with warnings.catch_warnings(), torch.no_grad(), native_output_silenced():
            warnings.simplefilter("ignore")
            # the converter reads the quantize/dequantize pairs, so they stay unfolded
            quantized, example = pt2e_quantized(module, input_shape, quantizer, calibration, fold_quantize=False)
            litert_torch.convert(quantized, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))

    def _converter(self):
        self.version()
        try:
            import litert_torch
        except ImportError:
            raise RuntimeMissing(f"the litert runtime needs litert-torch to convert: pip install -e '.[{self.extra}]'") from None
        return litert_torch
