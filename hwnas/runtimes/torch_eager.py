"""PyTorch eager, on CPU or CUDA: no file, each op built from its key (profilers/torch_runner.py on a
device with torch and hwnas); on CUDA each call synchronises so the timer sees the kernels."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import hwnas
from hwnas.errors import HwnasError
from hwnas.runtimes.base import FLOAT32, Calls, Runtime
from profilers import measure as timing


class TorchEager(Runtime):
    name = "torch"
    title = "PyTorch eager"
    table_name = "torch"
    opset = None

    def version(self) -> str:
        return torch.__version__

    def describe(self, threads: int) -> dict[str, Any]:
        return {"provider": "cpu", "threads": threads}

    def check_device(self, device: str) -> None:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise HwnasError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise HwnasError(f"--device {device}: this machine has no CUDA device")

    def network_calls(self, networks: dict[str, nn.Module], shape: tuple[int, ...], threads: int,
                      workdir: Path, dtype: str = FLOAT32) -> tuple[Calls, Calls]:
        self.check_precision(dtype)
        torch.set_num_threads(threads)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        tensor = torch.from_numpy(x)

        def eager(model: nn.Module) -> Callable[[], object]:
            def call() -> None:
                with torch.inference_mode():
                    model(tensor)
            return call

        return {name: eager(model.eval()) for name, model in networks.items()}, {name: x.sum for name in networks}

    def profile_here(self, space, results_csv: Path, threads: int, batch: int, warmup: int, runs: int,
                     progress: Callable[[int, int], None] | None, device: str, quiet: bool,
                     dtype: str = FLOAT32) -> dict[str, Any]:
        from hwnas.latency.kit import progress_bar

        self.check_device(device)
        self.check_precision(dtype)
        bar, update = progress_bar("measuring (torch)", quiet)
        with bar:
            return torch_profile(space, results_csv, device, threads, batch, warmup, runs, progress=update)


def torch_calls(keys, device: str, threads: int | None,
                networks: list[tuple[nn.Module, tuple[int, ...]]] | None = None) -> tuple[Calls, Calls]:
    """Eager PyTorch calls, one per key (on CUDA each call synchronises so the timer sees the kernels),
    and on CPU a preparation per key that reads its input, as the kit runners do."""
    from hwnas.latency.keys import build_op
    from hwnas.latency.kit import CALIBRATION_KEY

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    calls, prepare = {}, {}
    generator = torch.Generator().manual_seed(0)
    modules = [(key.name, build_op(key), key.input_shape) for key in keys]
    modules.append((CALIBRATION_KEY, nn.ReLU(), (keys[0].batch, 1, 1, 1)))
    modules += [(f"network:{i}", model, shape) for i, (model, shape) in enumerate(networks or [])]
    for name, module, shape in modules:
        module = module.eval().to(dev)
        x = torch.randn(*shape, generator=generator).to(dev)

        def call(module=module, x=x) -> None:
            with torch.inference_mode():
                module(x)
            sync()

        calls[name] = call
        if dev.type == "cpu":
            prepare[name] = x.sum
    return calls, prepare


def torch_profile(space, results_csv: Path, device: str = "cpu", threads: int | None = 1, batch: int = 1,
                  warmup: int = 10, runs: int = 100, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Time every key of `space` in eager PyTorch; write what the kit runners write."""
    from hwnas.latency.keys import space_keys
    from hwnas.latency.kit import CALIBRATION_KEY, calibration_networks
    from hwnas.latency.networks import input_shape
    from hwnas.latency.table import fingerprint

    keys = space_keys(space, batch)
    device_info = timing.describe_device()  # before measuring: the load average then is the device's own, not ours
    networks = calibration_networks(space, batch)
    calls, prepare = torch_calls(keys, device, threads, [(model, input_shape(space, batch)) for _, model in networks])
    names = {f"network:{i}" for i in range(len(networks))}
    # the networks in the ops' rounds, in bursts (profilers/measure.py): both see the same states of the host
    results = timing.measure(calls, warmup, runs, progress=progress, prepare=prepare,
                             burst={name: timing.NETWORK_BURST for name in names})
    timing.write_results(results_csv, results)
    dev = torch.device(device)
    description = {
        "kit": {"space": space.name, "fingerprint": fingerprint(keys), "batch": batch, "dtype": "float32",
                "opset": None, "hwnas_version": hwnas.__version__, "runtime": "torch"},
        "space_definition": space.model_dump(mode="json"), "calibration_key": CALIBRATION_KEY,
        "device": {**device_info, **({"gpu_model": torch.cuda.get_device_name(dev)} if dev.type == "cuda" else {})},
        "runtime": "torch", "runtime_version": torch.__version__, "provider": dev.type,
        "threads": threads or torch.get_num_threads(), "warmup": warmup, "runs": runs,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "unstable_keys": [k for k, s in results.items() if not s["stable"]],
        "networks": [{"key": f"network:{i}", "ops": ops} for i, (ops, _) in enumerate(networks)],
    }
    results_csv.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    return description
