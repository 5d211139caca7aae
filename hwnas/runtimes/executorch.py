"""ExecuTorch with the XNNPACK delegate: `.pte` programs lowered from torch.export, timed by
profilers/executorch_runner.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from hwnas.runtimes.base import FileRuntime, native_output_silenced
from profilers import executorch_runner


class ExecuTorchRuntime(FileRuntime):
    name = "executorch"
    table_name = "executorch"
    suffix = ".pte"
    extra = "executorch"
    device = executorch_runner.RUNTIME
    opset = None

    def save(self, module: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
        self.version()
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        with warnings.catch_warnings(), torch.no_grad(), native_output_silenced():
            warnings.simplefilter("ignore")
            program = torch.export.export(module.eval(), (torch.randn(*input_shape),))
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
        Path(path).write_bytes(lowered.buffer)
