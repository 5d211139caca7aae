"""Run directories: resolved config, atomic checkpoints, metrics CSV and JSON reports.

Every file is written to a temporary name and renamed into place, so a run killed at any moment
leaves either the previous complete file or the new complete file, never a torn one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml

from hwnas.config import read_yaml
from hwnas.errors import CheckpointError, HwnasError


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2) + "\n"))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with `weights_only=True`: a checkpoint can hold tensors and plain data, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # torch's refusal; its advice (load unsafely) is not ours to give
            raise CheckpointError(f"{path}: refused, it holds Python objects besides tensors and plain data, and "
                                  "loading those could run code; hwnas checkpoints never do") from None
        raise CheckpointError(f"{path}: not a loadable hwnas checkpoint (damaged or not a checkpoint)") from None
    except Exception as exc:  # a damaged file breaks the unpickler in many ways; weights_only ran none of its code
        raise CheckpointError(f"{path}: not a loadable hwnas checkpoint ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    """An exception's first line, without terminal escape codes, at most 160 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


class RunDir:
    """One run's folder. A fresh run refuses a folder that already holds a run (nothing is overwritten);
    `resume=True` requires one, with the same config."""

    CONFIG = "config.yaml"

    def __init__(self, path: Path):
        self.path = path
        self.fresh = False      # made by this process for a new run
        self.existed = False    # the (empty) folder was there before

    @contextmanager
    def kept_once_started(self) -> Iterator["RunDir"]:
        """A new run that fails before its first checkpoint leaves no folder behind: there is nothing to
        resume, and the corrected command can then use the same --out."""
        try:
            yield self
        except Exception:
            if self.fresh and not any(self.path.rglob("*.pt")):
                shutil.rmtree(self.path, ignore_errors=True)
                if self.existed:
                    self.path.mkdir(parents=True, exist_ok=True)
            raise

    @classmethod
    def prepare(cls, path: str | Path, config: dict[str, Any], resume: bool) -> "RunDir":
        run = cls(Path(path))
        if run.path.exists() and not run.path.is_dir():
            raise HwnasError(f"--out {run.path} is a file; a run's --out is a folder: choose another")
        saved = run.path / cls.CONFIG
        if resume:
            if not saved.is_file():
                raise HwnasError(f"--resume: {run.path} holds no run to resume (no {cls.CONFIG}); drop --resume")
            if read_yaml(saved) != config:
                raise HwnasError(
                    f"--resume: the config differs from the one {run.path} was started with; "
                    f"resume without --config/--set, or start a new run with another --out"
                )
            for torn in run.path.rglob(".*.tmp-*"):  # what a write killed half way left behind
                torn.unlink()
            return run
        if run.path.exists() and any(run.path.iterdir()):
            raise HwnasError(f"{run.path} already holds files; pass --resume to continue that run or choose another --out")
        run.fresh, run.existed = True, run.path.is_dir()
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            atomic_write(saved, lambda f: f.write(yaml.safe_dump(config, sort_keys=False)))
        except OSError as exc:
            raise HwnasError(f"cannot write the run directory {run.path}: {exc.strerror}") from None
        return run

    @classmethod
    def saved_config(cls, path: str | Path) -> dict[str, Any]:
        saved = Path(path) / cls.CONFIG
        if not saved.is_file():
            raise HwnasError(f"--resume: {path} holds no run to resume (no {cls.CONFIG})")
        return read_yaml(saved)

    def checkpoint(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}.pt"

    def file(self, name: str) -> Path:
        return self.path / name
