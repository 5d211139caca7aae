"""Measure a profiling kit with ExecuTorch (its XNNPACK-delegated `.pte` programs) on the device it runs on.

Needs Python, numpy and the `executorch` package (whose Python runtime links torch), not hwnas: copy this
folder (profilers/) and the kit to the device, run

    python profilers/executorch_runner.py KIT_DIR --out results.csv [--threads 1] [--warmup 10] [--runs 50]

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


class ExecuTorchModel:
    def __init__(self, method):
        self.method = method

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        return self.method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy().copy()

    def bound(self, x: np.ndarray) -> Callable[[], object]:
        import torch

        inputs = [torch.from_numpy(np.ascontiguousarray(x))]
        self.method.execute(inputs)
        # the program plans its own output memory: the returned tensor is a view of it, nothing is copied
        return lambda method=self.method, inputs=inputs: method.execute(inputs)


class ExecuTorch:
    name = "executorch"
    suffix = ".pte"

    def version(self) -> str:
        try:
            import importlib
            import importlib.metadata

            importlib.import_module("executorch.runtime")
            return importlib.metadata.version("executorch")
        except ImportError:
            raise runner.KitError("executorch is not installed here: pip install executorch") from None

    def _threads(self, threads: int) -> None:
        from executorch.extension.pybindings import portable_lib

        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)

    def load(self, path: str | Path, threads: int) -> ExecuTorchModel:
        from executorch.runtime import Runtime

        self._threads(threads)
        return ExecuTorchModel(Runtime.get().load_program(Path(path)).load_method("forward"))

    def describe(self, threads: int) -> dict:
        return {"provider": "XnnpackBackend", "threads": threads}


RUNTIME = ExecuTorch()


def main(argv: list[str] | None = None) -> int:
    return runner.main(RUNTIME, argv)


if __name__ == "__main__":
    sys.exit(main())
