"""Profiling on a noisy device: `hwnas profile` while other processes load the CPU.

The densenas_32 space (ONNX Runtime, 1 thread, batch 1) is profiled twice on a quiet machine, then
under load from 1 and from 2 busy processes (each a single-threaded loop of small matrix products, as
a background app would be). Each table is compared key by key with the first quiet one: the share of
keys whose 10th percentile (what tables predict from) and median agree within 5%, how many keys the
profiler flagged as unstable, and how many of the keys off by more than 5% it flagged.

    python benchmarks/noisy_profile.py --out benchmarks/results/noisy_profile.json

Run it on an otherwise idle machine: the quiet runs are the reference.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import pandas as pd

from hwnas.latency.kit import profile
from hwnas.spaces.definition import load_space

SPACE = "densenas_32"


def busy_loop(stop) -> None:
    import numpy as np

    a = np.random.default_rng(0).random((256, 256))
    while not stop.is_set():
        a = (a @ a) / 256.0


def compare(reference: Path, other: Path, description: dict) -> dict:
    a, b = pd.read_csv(reference, index_col="key"), pd.read_csv(other, index_col="key")
    a, b = a.loc[[k for k in a.index if ":" in k]], b.loc[[k for k in a.index if ":" in k]]  # op keys only
    unstable = set(description.get("unstable_keys", []))
    row = {"keys": len(a), "flagged_unstable": len(unstable & set(a.index))}
    for column in ("p10_ms", "median_ms"):
        off = (b[column] / a[column] - 1).abs() > 0.05
        row[f"{column}_within_5pct"] = round(float(1 - off.mean()), 4)
        row[f"{column}_off_keys"] = int(off.sum())
        row[f"{column}_off_and_flagged"] = int(sum(k in unstable for k in off[off].index))
        row[f"{column}_mean_abs_error_pct"] = round(float((b[column] / a[column] - 1).abs().mean() * 100), 2)
        row[f"{column}_within_5pct_or_flagged"] = round(
            1 - (row[f"{column}_off_keys"] - row[f"{column}_off_and_flagged"]) / len(a), 4)
    return row


def run(label: str, busy: int, folder: Path) -> tuple[Path, dict]:
    stop = mp.Event()
    loaders = [mp.Process(target=busy_loop, args=(stop,), daemon=True) for _ in range(busy)]
    for p in loaders:
        p.start()
    time.sleep(1.0 if busy else 0.0)
    started = time.perf_counter()
    try:
        description = profile(load_space(SPACE), folder / f"{label}.csv", "ort", label, threads=1, quiet=True)
    finally:
        stop.set()
        for p in loaders:
            p.join()
    description["wall_seconds"] = round(time.perf_counter() - started, 1)
    return folder / f"{label}.csv", description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/noisy_profile.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reference, ref_description = run("quiet-1", 0, folder)
        rows = {"quiet-1": {"seconds": ref_description["wall_seconds"],
                            "flagged_unstable": len(ref_description.get("unstable_keys", []))}}
        for label, busy in (("quiet-2", 0), ("load-1-process", 1), ("load-2-processes", 2)):
            path, description = run(label, busy, folder)
            rows[label] = {"busy_processes": busy, "seconds": description["wall_seconds"],
                           **compare(reference, path, description)}
            print(label, json.dumps(rows[label]), flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "space": SPACE, "runtime": "onnxruntime, 1 thread, batch 1",
              "reference": "quiet-1", "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
