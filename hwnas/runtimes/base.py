"""The one interface every runtime implements (the device-side half lives in profilers/, which needs
only the runtime's own package; this half adds what needs torch and hwnas: turning a module into the
runtime's file, and timing networks and kits on this machine with the profilers' protocol)."""

from __future__ import annotations

import contextlib
import copy
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from hwnas.errors import HwnasError

Calls = dict[str, Callable[[], object]]


class RuntimeMissing(HwnasError):
    pass


FLOAT32 = "float32"


class Runtime(ABC):
    name: str  # as the user types it
    title: str  # as a person writes it
    table_name: str  # as tables and kits record it
    precisions: tuple[str, ...] = (FLOAT32,)  # what its tables (kit files) can be measured at
    # what `hwnas export --quantize` and `hwnas run` can deploy with it: an int8 export is calibrated on
    # real images and its accuracy measured (ONNX Runtime's with the remedies of hwnas/quantize.py)
    deploy_precisions: tuple[str, ...] = (FLOAT32,)
    int8_scheme: str | None = None  # how it quantizes, as the export reports it
    extra: str | None = None  # the pip extra that installs it, when not a core dependency
    # how its outputs may differ from PyTorch's: absolute, scaled by max(1, largest |output|)
    tolerance: float = 1e-4

    @abstractmethod
    def version(self) -> str:
        """The runtime's version; RuntimeMissing (with the install command) when it is not installed."""

    @abstractmethod
    def describe(self, threads: int) -> dict[str, Any]:
        """What a table records of the runtime besides name and version (provider or delegate, threads)."""

    @abstractmethod
    def network_calls(self, networks: dict[str, nn.Module], shape: tuple[int, ...], threads: int,
                      workdir: Path, dtype: str = FLOAT32) -> tuple[Calls, Calls]:
        """One timed call per network in this runtime (at `dtype`) and the untimed preparation before each
        (reading the input, as the kit runners do for ops)."""

    @abstractmethod
    def profile_here(self, space, results_csv: Path, threads: int, batch: int, warmup: int, runs: int,
                     progress: Callable[[int, int], None] | None, device: str, quiet: bool,
                     dtype: str = FLOAT32) -> dict[str, Any]:
        """Time every key of `space` (and the calibration models) on this machine; write what the
        device-side runners write (results CSV and its description)."""

    def check_precision(self, dtype: str) -> None:
        from hwnas.runtimes import RUNTIMES

        if dtype not in self.precisions:
            raise HwnasError(f"--precision {dtype}: the {self.name} runtime measures {', '.join(self.precisions)} "
                             f"here; int8 tables come from the runtimes that quantize "
                             f"({', '.join(n for n, r in RUNTIMES.items() if dtype in r.precisions)})")

    def check_device(self, device: str) -> None:
        if device != "cpu":
            raise HwnasError(f"--device {device}: the {self.name} runtime runs on this machine's CPU; "
                             "--device is for the torch runtime")


class FileRuntime(Runtime):
    """A runtime that runs files (`.onnx`, `.pte`, `.tflite`): the device-side runner in profilers/
    loads and times them; this half writes them."""

    suffix: str
    device: Any  # the runner's runtime object (profilers/runner.py describes it)
    # other forms of this runtime's file it also runs, converted from that file (a mobile form): format -> suffix
    variants: dict[str, str] = {}

    @abstractmethod
    def save(self, module: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
        """Write the eval-mode `module`, for inputs of `input_shape`, as this runtime's file."""

    def save_at(self, module: nn.Module, input_shape: tuple[int, ...], path: Path, dtype: str = FLOAT32) -> None:
        """`save` at `dtype`: float32, or int8 where the runtime quantizes (`precisions`)."""
        self.check_precision(dtype)
        if dtype == FLOAT32:
            self.save(module, input_shape, path)
        else:
            self.save_quantized(module, input_shape, path)

    def save_quantized(self, module: nn.Module, input_shape: tuple[int, ...], path: Path,
                       calibration: np.ndarray | None = None) -> None:
        """The int8 file (runtimes whose `precisions` hold int8), its activation ranges from `calibration`
        images, or from random inputs (a kit's micro-models: a kernel's speed does not depend on them)."""
        raise NotImplementedError

    def save_variant(self, fmt: str, source: Path, out: Path) -> dict[str, Any]:
        """Convert this runtime's file `source` into its form `fmt` (one of `variants`); what the
        conversion found, for the export's report."""
        raise NotImplementedError

    def version(self) -> str:
        from profilers.runner import KitError

        try:
            return self.device.version()
        except KitError as exc:
            hint = f"pip install -e '.[{self.extra}]'" if self.extra else str(exc)
            raise RuntimeMissing(f"the {self.name} runtime is not installed: {hint}") from None

    def describe(self, threads: int) -> dict[str, Any]:
        return self.device.describe(threads)

    def load(self, path: Path, threads: int):
        """The runner's loaded model: `run(x) -> y`, `bound(x) -> call`."""
        return self.device.load(path, threads)

    def network_calls(self, networks: dict[str, nn.Module], shape: tuple[int, ...], threads: int,
                      workdir: Path, dtype: str = FLOAT32) -> tuple[Calls, Calls]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        calls = {}
        for name, model in networks.items():
            path = workdir / f"{name}{self.suffix}"
            self.save_at(model, shape, path, dtype)
            calls[name] = self.load(path, threads).bound(x)
        return calls, {name: x.sum for name in networks}

    def profile_here(self, space, results_csv: Path, threads: int, batch: int, warmup: int, runs: int,
                     progress: Callable[[int, int], None] | None, device: str, quiet: bool,
                     dtype: str = FLOAT32) -> dict[str, Any]:
        from hwnas.latency.kit import build_kit, progress_bar
        from profilers.runner import KitError, run_kit

        self.check_device(device)
        kit_dir = results_csv.parent / "kit"
        bar, update = progress_bar(f"writing {self.name} kit", quiet)
        with bar:
            build_kit(space, kit_dir, batch, self, progress=update, dtype=dtype)
        bar, update = progress_bar("measuring", quiet)
        with bar:
            try:
                return run_kit(self.device, kit_dir, results_csv, threads, warmup, runs, progress=update)
            except KitError as exc:
                raise HwnasError(str(exc)) from None


def pt2e_quantized(module: nn.Module, input_shape: tuple[int, ...], quantizer, calibration: np.ndarray | None,
                   fold_quantize: bool = True):
    """`module` quantized by PyTorch 2 export quantization with a runtime's own `quantizer`: observers
    inserted, calibrated on the `calibration` images (or 16 random batches: a kit's micro-models, whose
    kernels' speed does not depend on the ranges), then converted. Returns the quantized module and an
    example input."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    generator = torch.Generator().manual_seed(0)
    example = (torch.randn(*input_shape, generator=generator),)
    prepared = prepare_pt2e(torch.export.export(without_dropout(module), example).module(), quantizer)
    if calibration is None:
        batches = [torch.randn(*input_shape, generator=generator) for _ in range(16)]
    else:
        step = input_shape[0]
        batches = [torch.from_numpy(calibration[i:i + step])
                   for i in range(0, len(calibration) - len(calibration) % step, step)]
    for batch in batches:
        prepared(batch)
    return convert_pt2e(prepared, fold_quantize=fold_quantize), example


def without_dropout(module: nn.Module) -> nn.Module:
    """An eval-mode copy of `module` with its dropout layers removed. In eval mode they pass their input
    through, but exported they stay in the graph, and a quantizer may give a dropout output ranges of its
    own: litert-torch's converter then drops the op but leaves the layer after it computing with those
    ranges, not its input's, which cost a Fashion-MNIST network 1.7 points of accuracy in LiteRT's int8."""
    stripped = copy.deepcopy(module).eval()
    for parent in stripped.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.modules.dropout._DropoutNd):
                setattr(parent, name, nn.Identity())
    return stripped


@contextlib.contextmanager
def python_output_silenced() -> Iterator[None]:
    """Tools that print progress with Python's print and logging; the report says what matters."""
    import io
    import logging

    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Converters log from C++ straight to the process's stdout and stderr; the report says what matters.
    An exception still reaches the caller (only the file descriptors are redirected)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
