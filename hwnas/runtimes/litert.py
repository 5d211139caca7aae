"""LiteRT (TensorFlow Lite) with its XNNPACK CPU delegate: `.tflite` files converted by litert-torch,
timed by profilers/litert_runner.py. The input stays NCHW, as PyTorch gives it."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from hwnas.runtimes.base import FileRuntime, RuntimeMissing, native_output_silenced
from profilers import litert_runner


class LiteRtRuntime(FileRuntime):
    name = "litert"
    title = "LiteRT"
    table_name = "litert"
    suffix = ".tflite"
    extra = "litert"
    device = litert_runner.RUNTIME
    opset = None

    def save(self, module: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
        self.version()
        try:
            import litert_torch
        except ImportError:
            raise RuntimeMissing(f"the litert runtime needs litert-torch to convert: pip install -e '.[{self.extra}]'") from None
        with warnings.catch_warnings(), torch.no_grad(), native_output_silenced():
            warnings.simplefilter("ignore")
            litert_torch.convert(module.eval(), (torch.randn(*input_shape),)).export(str(path))
