"""The one training engine the bilevel search and the final training both drive.

An `Engine` owns what every kind of training shares: the device and memory format, the epoch loop
with its timing and progress bar, the metrics history and `metrics.csv`, and the atomic checkpoint
after every epoch that resume continues from (bit for bit on the CPU: the checkpoint holds every
stateful part, the batch streams and the random state). What an epoch does (weight steps only, or
weight and architecture steps) is the caller's `epoch` function; what it must keep between epochs is
the caller's `parts`, each with `state_dict` / `load_state_dict`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import zlib
from typing import Any, Callable, Iterable, Protocol

import torch
from tqdm import tqdm

from hwnas import distributed
from hwnas.allocator import keep_freed_memory
from hwnas.errors import CheckpointError
from hwnas.runs import RunDir, load_checkpoint, save_checkpoint, write_csv

log = logging.getLogger("hwnas")


def cosine_lr(epoch: int, epochs: int, lr: float, lr_min: float) -> float:
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def seed_of(*parts: Any) -> int:
    """A stable seed from a run's seed and names (stage, stream): the same in every process and session."""
    return zlib.crc32(repr(parts).encode())


class RunningMean:
    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, value: float, n: int) -> None:
        self.total, self.count = self.total + value * n, self.count + n

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


class Parts:
    """Several stateful things saved as one entry of a checkpoint (the search's two batch streams)."""

    def __init__(self, parts: dict[str, Stateful]):
        self.parts = parts

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


class Value:
    """A plain number or list kept in the checkpoint (the best accuracy so far)."""

    def __init__(self, value: Any):
        self.value = value

    def state_dict(self) -> Any:
        return self.value

    def load_state_dict(self, state: Any) -> None:
        self.value = state


class Engine:
    def __init__(self, run: RunDir, device: str, channels_last: bool, quiet: bool):
        self.run = run
        self.device = distributed.setup(device)
        keep_freed_memory()
        self.quiet = quiet or not distributed.is_main()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.history: list[dict[str, Any]] = []

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return x.to(self.device, memory_format=self.memory_format), y.to(self.device)

    def progress(self, steps: int, desc: str) -> Iterable[int]:
        """The steps of one epoch, with a progress bar on a terminal."""
        return tqdm(range(steps), desc=desc, leave=False, disable=self.quiet or not sys.stderr.isatty())

    def fit(self, name: str, start: int, epochs: int, parts: dict[str, Stateful],
            epoch: Callable[[int], dict[str, Any]], summary: Callable[[dict[str, Any]], str]) -> None:
        """Run `epoch(e)` for the epochs from `start`; each returns its metrics row. After each: the row,
        with its seconds, in the history and in `metrics.csv`, one log line `summary(row)`, and the
        checkpoint `name` of `parts`."""
        for e in range(start, epochs):
            started = time.perf_counter()
            row = epoch(e)
            row["seconds"] = time.perf_counter() - started
            self.history.append(row)
            log.info(summary(row))
            self._save(name, e + 1, e + 1 == epochs, parts)

    def _save(self, name: str, epochs_done: int, done: bool, parts: dict[str, Stateful]) -> None:
        if not distributed.is_main():
            return
        state = {"stage": name, "epochs_done": epochs_done, "done": done,
                 **{key: part.state_dict() for key, part in parts.items()},
                 "rng": torch.get_rng_state(), "history": self.history}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(self.run.checkpoint(name), state)
        write_csv(self.run.file("metrics.csv"), self.history)

    def restore(self, name: str, parts: dict[str, Stateful], what: str) -> int:
        """Epochs done by the checkpoint `name` (0 when there is none), its parts and the history loaded;
        `what` names the work in the message for a checkpoint that does not fit it."""
        path = self.run.checkpoint(name)
        if not path.exists():
            return 0
        state = load_checkpoint(path)
        try:
            for key, part in parts.items():
                part.load_state_dict(state[key])
            torch.set_rng_state(state["rng"])
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            self.history = list(state["history"])
            epochs_done = int(state["epochs_done"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: does not match this {what} ({str(exc).splitlines()[0][:160]})") from None
        log.info("%s: resumed after epoch %d", name, epochs_done)
        return epochs_done
