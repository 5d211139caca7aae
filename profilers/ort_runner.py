"""Measure a profiling kit with ONNX Runtime on the device it runs on.

Needs only Python, numpy and onnxruntime: copy this folder (profilers/) and the kit to the device, run

    python profilers/ort_runner.py KIT_DIR --out results.csv [--threads 1] [--warmup 10] [--runs 50]

and bring results.csv and results.json back for `hwnas profile ingest results.csv --out TABLE`.
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

KitError = runner.KitError
KIT_FORMAT = runner.KIT_FORMAT


def read_manifest(kit_dir: str | Path) -> dict:
    return runner.read_manifest(kit_dir)


def open_session(path: str | Path, threads: int, provider: str = "CPUExecutionProvider"):
    """A session as a deployed model runs: `threads` intra-op threads, sequential, all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=[provider])


def bound_call(session, x: np.ndarray) -> Callable[[], object]:
    """A call that runs `session` on `x` into a preallocated output buffer: inside a network an op's output
    goes to the runtime's own memory, so allocating and copying a fresh result array is not timed."""
    y = session.run(None, {session.get_inputs()[0].name: x})[0]
    out = np.empty_like(y)
    binding = session.io_binding()
    binding.bind_cpu_input(session.get_inputs()[0].name, x)
    binding.bind_output(session.get_outputs()[0].name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
    # keep the buffers alive as long as the call
    return lambda session=session, binding=binding, x=x, out=out: session.run_with_iobinding(binding)


class OrtModel:
    def __init__(self, session):
        self.session = session

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.session.get_inputs()[0].name: x})[0]

    def bound(self, x: np.ndarray) -> Callable[[], object]:
        return bound_call(self.session, x)


class OnnxRuntime:
    name = "onnxruntime"
    suffix = ".onnx"

    def __init__(self, provider: str = "CPUExecutionProvider"):
        self.provider = provider

    def version(self) -> str:
        try:
            import onnxruntime
        except ImportError:
            raise KitError("onnxruntime is not installed here: pip install onnxruntime") from None
        if self.provider not in onnxruntime.get_available_providers():
            raise KitError(f"execution provider {self.provider} is not available here: "
                           f"{onnxruntime.get_available_providers()}")
        return onnxruntime.__version__

    def load(self, path: str | Path, threads: int) -> OrtModel:
        return OrtModel(open_session(path, threads, self.provider))

    def describe(self, threads: int) -> dict:
        return {"provider": self.provider, "threads": threads}

    def configure(self, args) -> None:
        self.provider = args.provider


RUNTIME = OnnxRuntime()


def run_kit(kit_dir: str | Path, out: str | Path, threads: int = 1, warmup: int = 10, runs: int = 100,
            max_cv: float = 0.25, provider: str = "CPUExecutionProvider",
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Measure every model of the kit; write `out` (CSV) and its description beside it (`.json`)."""
    return runner.run_kit(OnnxRuntime(provider), kit_dir, out, threads, warmup, runs, max_cv, progress)


def main(argv: list[str] | None = None) -> int:
    return runner.main(OnnxRuntime(), argv, lambda parser: parser.add_argument(
        "--provider", default="CPUExecutionProvider", help="ONNX Runtime execution provider"))


if __name__ == "__main__":
    sys.exit(main())
