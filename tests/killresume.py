"""Shared by the methods' kill-and-resume tests: a real subprocess, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch


def _killed_and_resumed(argv, command: list[str], tmp_path: Path, checkpoint: str, epochs: int) -> None:
    """Run `argv(out)` to the end in tmp_path/full; run it again in tmp_path/killed, SIGKILL it once
    `checkpoints/<checkpoint>` exists (and before the end), then resume it: `hwnas COMMAND --out killed --resume`."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(argv(tmp_path / "full"), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(argv(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = tmp_path / "killed/checkpoints" / checkpoint
    deadline = time.time() + 120
    while not killed.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed.exists(), "the run should have checkpointed its first epoch before the kill"
    assert torch.load(killed, weights_only=True)["epochs_done"] < epochs, "killed before the end"

    resumed = subprocess.run([sys.executable, "-m", "hwnas", *command, "--out", str(tmp_path / "killed"), "--resume",
                              "--quiet"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr


def _sets(overrides: list[str]) -> list[str]:
    return sum([["--set", s] for s in overrides], [])


def kill_and_resume(method: str, tmp_path: Path, overrides: list[str], epochs: int = 4,
                    checkpoint: str = "search.pt", final: str | None = None) -> tuple[dict, dict]:
    """A search run to the end, and the same search SIGKILLed once `checkpoint` exists and resumed.

    Returns the `final` checkpoints (default: `checkpoint`) of the uninterrupted and of the resumed
    run, after checking that the kill came before the end and that both wrote the same `arch.json`.
    """
    overrides = overrides + [f"search.epochs={epochs}"]
    _killed_and_resumed(lambda out: [sys.executable, "-m", "hwnas", "search", method, "--out", str(out), "--quiet",
                                     *_sets(overrides)], ["search", method], tmp_path, checkpoint, epochs)
    assert (tmp_path / "full/arch.json").read_text() == (tmp_path / "killed/arch.json").read_text()
    final = final or checkpoint
    return (torch.load(tmp_path / "full/checkpoints" / final, weights_only=True),
            torch.load(tmp_path / "killed/checkpoints" / final, weights_only=True))


def kill_and_resume_training(arch: str, tmp_path: Path, overrides: list[str], epochs: int = 3) -> tuple[dict, dict]:
    """`hwnas train` run to the end, and the same training SIGKILLed after its first epoch and resumed;
    returns both runs' `weights/last.pt`."""
    overrides = overrides + [f"train.epochs={epochs}"]
    _killed_and_resumed(lambda out: [sys.executable, "-m", "hwnas", "train", "--arch", arch, "--out", str(out),
                                     "--quiet", *_sets(overrides)], ["train"], tmp_path, "train.pt", epochs)
    return (torch.load(tmp_path / "full/weights/last.pt", weights_only=True),
            torch.load(tmp_path / "killed/weights/last.pt", weights_only=True))
