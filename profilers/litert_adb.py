"""Profile a LiteRT kit on an Android phone, which runs neither Python nor pip: from a host with `adb`,
push each `.tflite` model, run LiteRT's own `benchmark_model` binary on the phone for it, and turn its
printed timings into the results a kit runner writes (`results.csv` and `results.json`), for
`hwnas profile ingest`. Needs only Python's standard library on the host.

    python profilers/litert_adb.py KIT_DIR --out results.csv --benchmark /data/local/tmp/benchmark_model
    python profilers/litert_adb.py KIT_DIR --out results.csv --from-logs LOG_DIR   # logs saved earlier

`benchmark_model` (LiteRT's tools/benchmark; prebuilt for Android arm64) times each model on its own, in
a tight loop, and prints count, first, current, min, max, mean and standard deviation in microseconds;
it prints no percentiles. The table made from these results therefore predicts from the mean
(`estimator: mean_ms`), and its ops are timed with their weights in cache, unlike the interleaved rounds
of the Python runners; the kit's calibration networks, timed the same way, fit the scale that
relates the sum of ops to a whole network. Each model's log is kept in LOG_DIR (default: beside --out).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

if __package__:
    from . import runner
    from .measure import RESULT_COLUMNS
else:  # run as a script from a copied profilers/ folder
    import runner  # type: ignore[no-redef]
    from measure import RESULT_COLUMNS  # type: ignore[no-redef]

REMOTE_DIR = "/data/local/tmp/hwnas-kit"
# benchmark_model's summary of a timed run: "count=50 first=49710 curr=49445 min=49104 max=50478 avg=49596.9 std=263"
_RUN = re.compile(r"count=(\d+)\s+first=([\d.]+)\s+curr=([\d.]+)\s+min=([\d.]+)\s+max=([\d.]+)\s+avg=([\d.]+)\s+std=([\d.]+)")
_THREADS = re.compile(r"Num threads:\s*\[(\d+)\]")


class LogError(runner.KitError):
    pass


def parse_benchmark_log(text: str, source: str = "benchmark_model output") -> dict[str, float]:
    """The timed run's statistics (ms) from one `benchmark_model` log: its last count= line (the first is
    the warm-up run)."""
    runs = _RUN.findall(text)
    if not runs:
        raise LogError(f"{source}: no 'count=... avg=... std=...' line; is this benchmark_model's output?")
    count, _first, _curr, low, _high, mean, std = (float(v) for v in runs[-1])
    if count < 1 or mean <= 0:
        raise LogError(f"{source}: the timed run has count={count:g}, avg={mean:g}")
    mean_ms, std_ms = mean / 1e3, std / 1e3
    # no median or 10th percentile is printed: those columns hold the mean, and `stable` follows the cv
    cv = std_ms / mean_ms
    return {"median_ms": mean_ms, "mean_ms": mean_ms, "std_ms": std_ms, "count": int(count), "cv": cv,
            "p10_ms": mean_ms, "min_ms": low / 1e3, "round_spread": 0.0, "remeasured": 0, "stable": cv <= 0.25}


def _adb(serial: str | None, *args: str, timeout: int = 600) -> str:
    command = ["adb", *(["-s", serial] if serial else []), *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise runner.KitError("adb not found: install Android's platform tools and connect the phone") from None
    except subprocess.TimeoutExpired:
        raise runner.KitError(f"`{' '.join(command)}` did not finish in {timeout} s") from None
    if done.returncode != 0:
        raise runner.KitError(f"`{' '.join(command)}` failed: {(done.stderr or done.stdout).strip()[:200]}")
    return done.stdout


def run_on_phone(kit_dir: Path, manifest: dict, logs: Path, benchmark: str, threads: int, warmup: int, runs: int,
                 serial: str | None) -> None:
    """Push the kit's models and write one `benchmark_model` log per model into `logs`."""
    _adb(serial, "shell", "mkdir", "-p", REMOTE_DIR)
    for entry in [*manifest["entries"], manifest["calibration"], *manifest.get("networks", [])]:
        remote = f"{REMOTE_DIR}/{Path(entry['file']).name}"
        _adb(serial, "push", str(kit_dir / entry["file"]), remote)
        text = _adb(serial, "shell", " ".join(shlex.quote(a) for a in [
            benchmark, f"--graph={remote}", f"--num_threads={threads}", f"--warmup_runs={warmup}",
            f"--num_runs={runs}", "--use_xnnpack=true"]))
        (logs / _log_name(entry["key"])).write_text(text)
        print(f"  {entry['key']}: {parse_benchmark_log(text, entry['key'])['mean_ms']:.3f} ms", flush=True)


def _log_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".txt"


def phone_description(serial: str | None) -> dict:
    props = {name: _adb(serial, "shell", "getprop", prop).strip() for name, prop in (
        ("model", "ro.product.model"), ("soc", "ro.soc.model"), ("android", "ro.build.version.release"),
        ("abi", "ro.product.cpu.abi"))}
    return {"cpu_model": props["soc"] or props["model"], "phone": props["model"], "system": f"Android {props['android']}",
            "machine": props["abi"], "load_average_1min": None}


def results_from_logs(kit_dir: Path, manifest: dict, logs: Path, out: Path, threads: int, warmup: int, runs: int,
                      device: dict) -> dict:
    """Read every model's log and write the results CSV and its description, as the Python runners do."""
    import csv

    results = {}
    for entry in [*manifest["entries"], manifest["calibration"], *manifest.get("networks", [])]:
        path = logs / _log_name(entry["key"])
        if not path.is_file():
            raise LogError(f"{path} is missing: every model of the kit needs its benchmark_model log")
        text = path.read_text(errors="replace")
        found = _THREADS.search(text)
        if found and int(found.group(1)) != threads:
            raise LogError(f"{path}: benchmark_model ran with {found.group(1)} thread(s), not --threads {threads}")
        results[entry["key"]] = parse_benchmark_log(text, str(path))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        for key, stats in results.items():
            writer.writerow({"key": key, **{c: stats[c] for c in RESULT_COLUMNS[1:]}})
    description = {
        "kit": {k: manifest.get(k) for k in ("space", "fingerprint", "batch", "dtype", "opset", "hwnas_version", "runtime")},
        "space_definition": manifest["space_definition"], "calibration_key": manifest["calibration"]["key"],
        "networks": manifest.get("networks", []), "device": device, "runtime": "litert",
        "runtime_version": "benchmark_model", "provider": "XNNPACK delegate (benchmark_model)", "threads": threads,
        "warmup": warmup, "runs": runs, "estimator": "mean_ms", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "unstable_keys": [key for key, stats in results.items() if not stats["stable"]],
    }
    out.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="litert_adb", description=__doc__.splitlines()[0])
    parser.add_argument("kit", help="a LiteRT kit made by `hwnas profile kit --runtime litert`")
    parser.add_argument("--out", required=True, help="results CSV (its description goes beside it as .json)")
    parser.add_argument("--benchmark", default="/data/local/tmp/benchmark_model", help="benchmark_model on the phone")
    parser.add_argument("--from-logs", help="read benchmark_model logs saved earlier instead of running adb")
    parser.add_argument("--logs", help="folder for the logs (default: OUT's name + _logs beside it)")
    parser.add_argument("--serial", help="adb device serial, when several are connected")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        print(f"litert_adb: error: {out} exists; choose another --out or remove it", file=sys.stderr)
        return 2
    try:
        kit_dir = Path(args.kit)
        manifest = runner.read_manifest(kit_dir, "litert")
        if args.from_logs:
            logs, device = Path(args.from_logs), {"cpu_model": "unknown (from saved benchmark_model logs)",
                                                 "load_average_1min": None}
        else:
            logs = Path(args.logs or out.with_name(out.stem + "_logs"))
            logs.mkdir(parents=True, exist_ok=True)
            device = phone_description(args.serial)
            run_on_phone(kit_dir, manifest, logs, args.benchmark, args.threads, args.warmup, args.runs, args.serial)
        results_from_logs(kit_dir, manifest, logs, out, args.threads, args.warmup, args.runs, device)
    except runner.KitError as exc:
        out.unlink(missing_ok=True)
        print(f"litert_adb: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}; bring it and {out.with_suffix('.json').name} to `hwnas profile ingest`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
