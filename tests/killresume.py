"""Shared by the methods' kill-and-resume tests: a real subprocess, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch


def _command(method: str, out: Path, overrides: list[str]) -> list[str]:
    sets = sum([["--set", s] for s in overrides], [])
    return [sys.executable, "-m", "hwnas", "search", method, "--out", str(out), "--quiet", *sets]


def kill_and_resume(method: str, tmp_path: Path, overrides: list[str], epochs: int = 4,
                    checkpoint: str = "search.pt", final: str | None = None) -> tuple[dict, dict]:
    """Run a search to the end; run it again, SIGKILL it once `checkpoint` exists, resume it.

    Returns the `final` checkpoints (default: `checkpoint`) of the uninterrupted and of the resumed
    run, after checking that the kill came before the end and that both wrote the same `arch.json`.
    """
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    overrides = overrides + [f"search.epochs={epochs}"]
    subprocess.run(_command(method, tmp_path / "full", overrides), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_command(method, tmp_path / "killed", overrides), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = tmp_path / "killed/checkpoints" / checkpoint
    deadline = time.time() + 120
    while not killed.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed.exists(), "the run should have checkpointed its first epoch before the kill"
    assert torch.load(killed, weights_only=True)["epochs_done"] < epochs, "killed before the end"

    resumed = subprocess.run(
        [sys.executable, "-m", "hwnas", "search", method, "--out", str(tmp_path / "killed"), "--resume", "--quiet"],
        env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "full/arch.json").read_text() == (tmp_path / "killed/arch.json").read_text()
    final = final or checkpoint
    return (torch.load(tmp_path / "full/checkpoints" / final, weights_only=True),
            torch.load(tmp_path / "killed/checkpoints" / final, weights_only=True))
