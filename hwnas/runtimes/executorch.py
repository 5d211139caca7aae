"""ExecuTorch with the XNNPACK delegate: `.pte` programs lowered from torch.export, timed by
profilers/executorch_runner.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwnas.runtimes.base import FLOAT32, FileRuntime, native_output_silenced, pt2e_quantized
from profilers import executorch_runner


class ExecuTorchRuntime(FileRuntime):
    name = "executorch"
    title = "ExecuTorch"
    table_name = "executorch"
    suffix = ".pte"
    extra = "executorch"
    device = executorch_runner.RUNTIME
    opset = None
    precisions = (FLOAT32, "int8")
    deploy_precisions = (FLOAT32, "int8")
    int8_scheme = "XNNPACKQuantizer (PT2E): symmetric per-channel int8 weights, int8 activations"

    def save(self, module: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
        self.version()
        with warnings.catch_warnings(), torch.no_grad(), native_output_silenced():
            warnings.simplefilter("ignore")
            program = torch.export.export(module.eval(), (torch.randn(*input_shape),))
        _write_lowered(program, path)

    def save_quantized(self, module: nn.Module, input_shape: tuple[int, ...], path: Path,
                       calibration: np.ndarray | None = None) -> None:
        # XNNPACK's own int8 scheme (PT2E with XNNPACKQuantizer): symmetric per-channel int8 weights, int8
        # activations
        self.version()
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        with warnings.catch_warnings(), torch.no_grad(), native_output_silenced():
            warnings.simplefilter("ignore")
            quantized, example = pt2e_quantized(module, input_shape, quantizer, calibration)
            program = torch.export.export(quantized, example)
        _write_lowered(program, path)


def _write_lowered(program, path: Path) -> None:
    """The exported program with every op XNNPACK takes delegated to it, as a `.pte`."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with warnings.catch_warnings(), native_output_silenced():
        warnings.simplefilter("ignore")
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    Path(path).write_bytes(lowered.buffer)
