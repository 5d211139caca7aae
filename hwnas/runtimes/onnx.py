"""ONNX Runtime: `.onnx` files exported with the TorchScript exporter, timed by profilers/ort_runner.py."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwnas.runtimes.base import FLOAT32, FileRuntime
from profilers import ort_runner

OPSET = 17


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], path: Path, dynamic_batch: bool = False) -> None:
    """Export in eval mode with the TorchScript exporter: fast (about 0.1 s for an op) and it folds BN."""
    module = module.eval()
    dynamic = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(*input_shape),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"], dynamic_axes=dynamic,
                          do_constant_folding=True)


class OnnxRuntime(FileRuntime):
    name = "ort"
    table_name = "onnxruntime"
    suffix = ".onnx"
    mobile_format = "ort"  # ONNX Runtime's mobile form of the .onnx, written beside it
    device = ort_runner.RUNTIME
    opset = OPSET
    precisions = (FLOAT32, "int8")
    deploy_precisions = (FLOAT32, "int8")

    def save(self, module: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
        export_onnx(module, input_shape, path)

    def save_quantized(self, module: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
        # the export's first remedy (per-channel static QDQ): the others change ranges, not kernels;
        # the ranges come from random inputs, which a kernel's speed does not depend on
        from hwnas.quantize import LADDER, prepare, quantize

        count = 16 * input_shape[0]  # 16 calibration batches
        calibration = np.random.default_rng(0).standard_normal((count, *input_shape[1:])).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(module, input_shape, Path(tmp) / "float.onnx")
            prepare(Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx")
            quantize(Path(tmp) / "prepared.onnx", Path(path), calibration, LADDER[0])
