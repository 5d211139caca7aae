"""Shared by the methods' kill-and-resume tests: a real subprocess, a real SIGKILL."""

from __future__ import annotations

import os
import random
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


def _loadable_or_absent(folder: Path) -> None:
    for path in folder.glob("*.pt"):
        torch.load(path, weights_only=True)  # raises if a kill left a torn checkpoint behind


def kill_five_times(argv, command: list[str], tmp_path: Path, checkpoint: str) -> list[str]:
    """Run `argv(out)` to the end in tmp_path/full; run it again in tmp_path/killed and SIGKILL it five
    times, resuming after each kill: once while it writes `checkpoints/<checkpoint>` (its temporary file
    exists), then at four random moments (seeded) of a run as long as the uninterrupted one. After every
    kill each checkpoint on disk must load. Then resume to the end. Returns what each kill hit."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    started = time.perf_counter()
    subprocess.run(argv(tmp_path / "full"), check=True, env=env, capture_output=True)
    duration = time.perf_counter() - started
    rng = random.Random(0)
    killed, checkpoints = tmp_path / "killed", tmp_path / "killed/checkpoints"
    resume = [sys.executable, "-m", "hwnas", *command, "--out", str(killed), "--resume", "--quiet"]
    hits: list[str] = []
    for kill in range(5):
        proc = subprocess.Popen(resume if (killed / "config.yaml").exists() else argv(killed), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill == 0:  # during a checkpoint write: poll for the temporary file atomic_write writes first
            deadline = time.time() + 300
            while proc.poll() is None and time.time() < deadline and \
                    not any(checkpoints.glob(f".{checkpoint}.tmp-*")):
                time.sleep(0.0002)
        else:
            deadline = time.time() + rng.uniform(0.1, 0.9) * duration
            while proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        torn = any(checkpoints.glob(f".{checkpoint}.tmp-*"))
        hits.append("finished" if finished else "during a checkpoint write" if torn else "between writes")
        _loadable_or_absent(checkpoints)
    done = subprocess.run(resume if (killed / "config.yaml").exists() else argv(killed), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not any(checkpoints.glob(".*.tmp-*")), "a resumed run clears what a killed write left"
    return hits


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
