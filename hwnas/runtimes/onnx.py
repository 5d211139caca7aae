"""ONNX Runtime: `.onnx` files exported with the TorchScript exporter, timed by profilers/ort_runner.py."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.runtimes.base import FLOAT32, FileRuntime, python_output_silenced
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
    title = "ONNX Runtime"
    table_name = "onnxruntime"
    suffix = ".onnx"
    variants = {"ort": ".ort"}  # ONNX Runtime's mobile form of the .onnx
    device = ort_runner.RUNTIME
    opset = OPSET
    precisions = (FLOAT32, "int8")
    deploy_precisions = (FLOAT32, "int8")

    def save(self, module: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
        export_onnx(module, input_shape, path)

    int8_scheme = "static QDQ, per-channel int8 weights, uint8 activations, with remedies (hwnas/quantize.py)"

    def save_quantized(self, module: nn.Module, input_shape: tuple[int, ...], path: Path,
                       calibration: np.ndarray | None = None) -> None:
        # the export's first remedy (per-channel static QDQ): the others change ranges, not kernels
        from hwnas.quantize import LADDER, prepare, quantize

        if calibration is None:  # 16 batches
            shape = (16 * input_shape[0], *input_shape[1:])
            calibration = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(module, input_shape, Path(tmp) / "float.onnx")
            prepare(Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx")
            quantize(Path(tmp) / "prepared.onnx", Path(path), calibration, LADDER[0])

    def save_variant(self, fmt: str, source: Path, out: Path) -> dict:
        """The mobile (.ort) file, after the mobile usability check (NNAPI / CoreML suitability)."""
        import contextlib
        import io
        import logging

        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
        from onnxruntime.tools.mobile_helpers import usability_checker

        messages = io.StringIO()
        checker_log = logging.getLogger("hwnas.export.usability")
        handler = logging.StreamHandler(messages)
        checker_log.addHandler(handler)
        checker_log.setLevel(logging.INFO)
        checker_log.propagate = False
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                accelerators_may_help = usability_checker.analyze_model(source, logger=checker_log)
        finally:
            checker_log.removeHandler(handler)
        verdicts = [line.strip() for line in messages.getvalue().splitlines() if "should perform well with" in line]
        with tempfile.TemporaryDirectory() as tmp, python_output_silenced():
            convert_onnx_models_to_ort(source, output_dir=Path(tmp), optimization_styles=[OptimizationStyle.Fixed])
            converted = Path(tmp) / (source.stem + ".ort")
            if not converted.is_file():
                raise HwnasError(f"ONNX Runtime did not convert {source} to its mobile format")
            converted.replace(out)
        return {"nnapi_or_coreml_may_help": bool(accelerators_may_help), "usability": verdicts}
