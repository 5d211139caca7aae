"""Timing shared by the device-side runners. Needs only the Python standard library and numpy, so it
runs on a phone, a Raspberry Pi or a Jetson without hwnas or torch.

`measure` times many small callables the way latency tables need:
- warm-up calls first (caches, allocators, lazy kernel selection);
- timed calls in interleaved rounds: each round calls every key once, in a fresh random order, so slow
  drift of the device (frequency scaling, heat, background load, a shared host's changing speed)
  spreads over all keys alike, and each op runs with the caches holding other ops' data, as it does
  inside a network (timing one op in a tight loop keeps its weights in cache and underestimated small
  networks by about 10%); whole networks take their turns as short bursts (`measure_networks`);
- statistics per key: median, mean, standard deviation, coefficient of variation, and the 10th
  percentile `p10_ms`, the latency on a quiet device. Background load and a busy hypervisor only
  ever add time, so on a shared machine the median of one run can move by 10% against the next
  while the 10th percentile stays within a few percent; tables predict from `p10_ms`;
- a key is unstable when its samples spread too much (coefficient of variation above `max_cv`) or
  its runs disagree (the 10th percentiles of the first to last fifth of the runs differ by more than
  `max_round_spread`); unstable keys are
  measured again, up to `remeasure` times, keeping the steadiest set of samples, and are flagged if
  they never settle.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import random
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

RESULT_COLUMNS = ["key", "median_ms", "mean_ms", "std_ms", "count", "cv", "p10_ms", "round_spread", "remeasured",
                  "stable"]
QUIET_PERCENTILE = 10


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, macOS sysctl), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            field, _, value = line.partition(":")
            if field.strip() in ("model name", "Hardware", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            import subprocess

            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.machine()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpuinfo() -> dict[str, str]:
    """The first value of each field of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


# the instruction-set extensions that choose a runtime's kernels (x86-64 and Arm), named in tables so
# that a reader sees why two hosts of one CPU model string differ
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                     "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
                     "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme")


def host_identity() -> dict[str, object]:
    """What tells one host from another beyond its CPU model string: one model name covers several
    generations, core counts, cache sizes and instruction sets (AVX-512 or not changes every kernel)."""
    import hashlib

    info = _cpuinfo()
    flags = info.get("flags") or info.get("Features") or ""
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12] if flags else None,
        "vector_isa": [name for name in VECTOR_EXTENSIONS if name in flags.split()],
        "cpu_count": os.cpu_count(),
        "cache_size": info.get("cache size"),
        "memory_gb": memory_gb,
        "machine": platform.machine(),
    }


def describe_device() -> dict[str, object]:
    """What a reader of the table needs to judge where it came from and how noisy the device was."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        **host_identity(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "load_average_1min": round(load[0], 2) if load else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def statistics(samples_s: Iterable[float], groups: int = 5) -> dict[str, float]:
    """Median, mean, standard deviation (ms), count, coefficient of variation, 10th percentile, and the
    relative spread of the 10th percentiles of `groups` consecutive equal chunks of the samples."""
    ms = np.asarray(list(samples_s), dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no samples")
    median, mean, std = float(np.median(ms)), float(ms.mean()), float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    chunks = [c for c in np.array_split(ms, max(1, min(groups, ms.size))) if c.size]
    quiet = float(np.percentile(ms, QUIET_PERCENTILE))
    per_round = [float(np.percentile(c, QUIET_PERCENTILE)) for c in chunks]
    spread = (max(per_round) - min(per_round)) / quiet if quiet > 0 else 0.0
    return {"median_ms": median, "mean_ms": mean, "std_ms": std, "count": int(ms.size),
            "cv": std / mean if mean > 0 else 0.0, "p10_ms": quiet, "round_spread": spread}


def _timed_rounds(calls: dict[str, Callable[[], object]], keys: list[str], runs: int, rng: random.Random,
                  tick: Callable[[int], None], prepare: dict[str, Callable[[], object]], burst: dict[str, int]
                  ) -> dict[str, list[float]]:
    """`runs` timed calls per key in `runs` rounds, each calling its keys in a fresh random order. A key
    with a burst of b > 1 takes its turn every b-th round: one untimed call, then b timed calls in a row."""
    samples: dict[str, list[float]] = {key: [] for key in keys}
    clock = time.perf_counter
    for round_ in range(runs):
        order = [key for key in keys if round_ % burst[key] == 0]
        rng.shuffle(order)
        for key in order:
            call, ready, timed = calls[key], prepare.get(key), min(burst[key], runs - round_)
            if burst[key] > 1:
                call()
            for _ in range(timed):
                if ready:
                    ready()
                start = clock()
                call()
                samples[key].append(clock() - start)
            tick(timed)
    return samples


def measure(calls: dict[str, Callable[[], object]], warmup: int = 10, runs: int = 100, max_cv: float = 0.25,
            max_round_spread: float = 0.05, remeasure: int = 2, seed: int = 0,
            progress: Callable[[int, int], None] | None = None,
            prepare: dict[str, Callable[[], object]] | None = None, burst: int | dict[str, int] = 1
            ) -> dict[str, dict[str, float]]:
    """Statistics per key of `calls` (see the module doc). `progress(done, total)` counts calls made;
    `prepare[key]()`, if given, runs untimed before each timed call of `key`; `burst` (one for all keys, or
    per key, 1 where a key is not named): see measure_networks."""
    prepare = prepare or {}
    burst = {key: burst.get(key, 1) if isinstance(burst, dict) else burst for key in calls}
    if runs < 1 or warmup < 0 or min(burst.values(), default=1) < 1:
        raise ValueError(f"need runs >= 1, warmup >= 0 and bursts >= 1, got runs={runs} warmup={warmup} burst={burst}")
    rng = random.Random(seed)
    keys = list(calls)
    total = len(keys) * (warmup + runs)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    for key in keys:
        for _ in range(warmup):
            calls[key]()
        tick(warmup)
    samples = _timed_rounds(calls, keys, runs, rng, tick, prepare, burst)
    results = {key: {**statistics(s), "remeasured": 0} for key, s in samples.items()}

    def unstable(stats: dict[str, float]) -> bool:
        return stats["cv"] > max_cv or stats["round_spread"] > max_round_spread

    for attempt in range(1, remeasure + 1):
        shaky = [key for key in keys if unstable(results[key])]
        if not shaky:
            break
        total += len(shaky) * runs
        again = _timed_rounds(calls, shaky, runs, rng, tick, prepare, burst)
        for key in shaky:
            fresh = statistics(again[key])
            if fresh["round_spread"] + fresh["cv"] < results[key]["round_spread"] + results[key]["cv"]:
                results[key] = {**fresh, "remeasured": attempt}
            else:
                results[key]["remeasured"] = attempt
    for stats in results.values():
        stats["stable"] = not unstable(stats)
    return results


NETWORK_BURST = 5
MIN_NETWORK_SPAN_S = 3.0  # longer than the slow stretches seen on a shared VM


def measure_networks(calls: dict[str, Callable[[], object]], warmup: int = 10, runs: int = 100,
                     burst: int = NETWORK_BURST, min_span_s: float = MIN_NETWORK_SPAN_S,
                     **options) -> dict[str, dict[str, float]]:
    """`measure` for whole networks, timed as a deployed network runs: called again and again, its weights
    stay in cache (interleaved call by call with other networks they do not, which made a 0.3 ms network
    10-15% slower). So each network's turn is a burst of `burst` consecutive timed calls after one untimed
    call that brings its weights back. The turns still interleave the networks, so each network's bursts
    spread over the whole measurement: a shared host's speed can change from one second to the next (a
    2-core cloud VM ran the same network at 1.3 ms or 1.95 ms, in stretches of 10 ms to 3.6 s, 30% of the
    time slow), and one network's calls all in a row caught either state, where bursts spread over the
    measurement find the quiet one as the interleaved op rounds do. Measure whole networks together with
    ops by passing `burst={network: NETWORK_BURST, ...}` to `measure`: then both see the same stretches.
    A few fast networks alone would be done in a fraction of a second: they get more runs, so that the
    measurement lasts at least `min_span_s`."""
    runs = max(runs, runs_for_span(calls, min_span_s, options.get("prepare")))
    return measure(calls, warmup, runs, burst=burst, **options)


def runs_for_span(calls: dict[str, Callable[[], object]], span_s: float,
                  prepare: dict[str, Callable[[], object]] | None = None, most: int = 5000) -> int:
    """Rounds of `calls` (one call each) that take about `span_s`, from one timed call each after a warm one."""
    if span_s <= 0:
        return 0
    round_s = 0.0
    for key, call in calls.items():
        ready = (prepare or {}).get(key, lambda: None)
        ready()
        call()
        ready()
        start = time.perf_counter()
        call()
        round_s += time.perf_counter() - start
    return min(most, math.ceil(span_s / max(round_s, 1e-9)))


def write_results(path: str | Path, results: dict[str, dict[str, float]]) -> None:
    """CSV with one row per key (RESULT_COLUMNS), written to a temp file then renamed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        for key, stats in results.items():
            writer.writerow({"key": key, **{c: stats[c] for c in RESULT_COLUMNS[1:]}})
    os.replace(tmp, path)


class ProgressPrinter:
    """Plain progress lines with the time left, for devices without tqdm: at most one every few seconds."""

    def __init__(self, every_s: float = 5.0):
        self.start = time.monotonic()
        self.last = 0.0
        self.every_s = every_s

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic() - self.start
        if now - self.last < self.every_s and done < total:
            return
        self.last = now
        left = now / max(done, 1) * (total - done)
        print(f"  {done}/{total} calls, {now:.0f} s elapsed, about {left:.0f} s left", flush=True)
