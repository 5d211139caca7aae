"""Measure a profiling kit with LiteRT (TensorFlow Lite, its XNNPACK CPU delegate) on the device it runs on.

Needs only Python, numpy and `ai-edge-litert`, not hwnas or torch: copy this folder (profilers/) and the
kit to the device, run

    python profilers/litert_runner.py KIT_DIR --out results.csv [--threads 1] [--warmup 10] [--runs 50]

and bring results.csv and results.json back for `hwnas profile ingest results.csv --out TABLE`. On an
Android phone, without Python, use the kit's `adb_benchmark.sh` with LiteRT's `benchmark_model` instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

if __package__:
    from . import runner
else:  # run as a script from a copied profilers/ folder
    import runner  # type: ignore[no-redef]


class LiteRtModel:
    """A loaded model that takes and gives float32. A fully int8 model (hwnas's int8 `.tflite`) has int8
    input and output with a scale and zero point, as an app feeds it: the input is quantized with them
    before it is set (outside the timed call, as an app converts its camera frame) and the output
    dequantized."""

    def __init__(self, interpreter):
        self.interpreter = interpreter
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]

    def _tensor(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return np.ascontiguousarray(x, dtype=np.float32)
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], self._tensor(x))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])
        if y.dtype == np.float32:
            return y.copy()
        scale, zero_point = self.output["quantization"]
        return (y.astype(np.float32) - zero_point) * scale

    def bound(self, x: np.ndarray) -> Callable[[], object]:
        # the input is set once: the interpreter keeps it in its own buffer, and so its output
        self.interpreter.set_tensor(self.input["index"], self._tensor(x))
        return self.interpreter.invoke


class LiteRt:
    name = "litert"
    suffix = ".tflite"

    def version(self) -> str:
        try:
            import importlib
            import importlib.metadata

            importlib.import_module("ai_edge_litert.interpreter")
            return importlib.metadata.version("ai-edge-litert")
        except ImportError:
            raise runner.KitError("ai-edge-litert is not installed here: pip install ai-edge-litert") from None

    def load(self, path: str | Path, threads: int) -> LiteRtModel:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        return LiteRtModel(interpreter)

    def describe(self, threads: int) -> dict:
        return {"provider": "XNNPACK delegate", "threads": threads}


RUNTIME = LiteRt()


def main(argv: list[str] | None = None) -> int:
    return runner.main(RUNTIME, argv)


if __name__ == "__main__":
    sys.exit(main())
