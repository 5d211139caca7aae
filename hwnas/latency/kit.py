"""Profiling kits (one small model per latency key, in one runtime's format), ingesting a runner's results into a table,
and the one-step local form that does both on this machine.

A kit is a folder: `manifest.json` (space, its definition and key fingerprint, batch, opset, and one
entry per key: key, model file, input shape) and `models/`. Each model is the op exported in eval mode,
so BN is folded into the conv exactly as it is in a deployed network. The kit also carries a trivial
model whose time is the runtime's fixed per-call cost, and a few random whole networks of the space:
measured in the same rounds, they calibrate how the sum of op latencies becomes the
latency of a network (see `network_scale` and `op_cost_ms` in hwnas/latency/table.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

import hwnas
from hwnas.config import format_validation_error
from hwnas.errors import HwnasError, LatencyError
from hwnas.files import read_json
from hwnas.latency.keys import at_precision, build_op, space_keys
from hwnas.latency.networks import arch_keys, build_network, input_shape, sample_arch
from hwnas.latency.table import DEFAULT_ESTIMATOR, STAT_COLUMNS, LatencyTable, fingerprint, make_table, save_table
from hwnas.spaces.definition import CellSpace, RoutingSpace, parse_space
from hwnas.runtimes import DEFAULT_RUNTIME, FileRuntime, Runtime, get_runtime
from profilers import measure as timing
from profilers.runner import KIT_FORMAT

log = logging.getLogger(__name__)

CALIBRATION_KEY = "call_overhead"
CALIBRATION_NETWORKS = 16
CALIBRATION_SEED = 1000  # `hwnas lut validate` samples its networks with other seeds
# a table is refused when the device's 1-minute load average exceeded this as profiling started: one other
# busy process adds about 1, and two busy processes slow each other several-fold on a small CPU
# (HWNAS_MAX_PROFILE_LOAD changes it: the test suite, itself a busy process, raises it)
MAX_LOAD = float(os.environ.get("HWNAS_MAX_PROFILE_LOAD", "0.5"))


def _fresh_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HwnasError(f"{out} exists and is not empty; choose another --out or remove it")


def build_kit(space: RoutingSpace | CellSpace, out: str | Path, batch: int = 1, runtime: Runtime | str = DEFAULT_RUNTIME,
              progress: Callable[[int, int], None] | None = None, dtype: str = "float32") -> dict[str, Any]:
    """Write one model per latency key of `space` in `runtime`'s format, at `dtype`, into `out` (written
    whole, then moved into place). The call-overhead model stays float: it times the call itself."""
    out = Path(out)
    _fresh_dir(out)
    runtime = get_runtime(runtime) if isinstance(runtime, str) else runtime
    if not isinstance(runtime, FileRuntime):
        raise HwnasError(f"the {runtime.name} runtime has no model files to put in a kit: profile here with "
                         f"`hwnas profile --runtime {runtime.name}`, or run profilers/torch_runner.py on any kit")
    runtime.version()  # refused before anything is written when the runtime is not installed
    runtime.check_precision(dtype)
    if batch < 1:
        raise HwnasError(f"--batch must be at least 1, got {batch}")
    keys = space_keys(space, batch, dtype)
    staging = Path(tempfile.mkdtemp(prefix=".kit-", dir=out.parent if out.parent.exists() else None))
    try:
        (staging / "models").mkdir()
        entries = []
        for i, key in enumerate(keys):
            file = f"models/{i:04d}_{key.op}{runtime.suffix}"
            runtime.save_at(build_op(key), key.input_shape, staging / file, dtype)
            entries.append({"key": key.name, "file": file, "input_shape": list(key.input_shape)})
            if progress:
                progress(i + 1, len(keys))
        calibration = {"key": CALIBRATION_KEY, "file": f"models/calibration{runtime.suffix}",
                       "input_shape": [batch, 1, 1, 1]}
        runtime.save(nn.ReLU(), (batch, 1, 1, 1), staging / calibration["file"])
        (staging / "networks").mkdir()
        networks = []
        for i, (ops, model) in enumerate(calibration_networks(space, batch, dtype)):
            networks.append({"key": f"network:{i}", "file": f"networks/{i}{runtime.suffix}",
                             "input_shape": list(input_shape(space, batch)), "ops": ops})
            runtime.save_at(model, input_shape(space, batch), staging / networks[-1]["file"], dtype)
        manifest = {
            "format": KIT_FORMAT, "space": space.name, "space_definition": space.model_dump(mode="json"),
            "fingerprint": fingerprint(keys), "batch": batch, "dtype": dtype, "opset": runtime.opset,
            "runtime": runtime.table_name, "runtime_version": runtime.version(),
            "hwnas_version": hwnas.__version__, "torch_version": torch.__version__,
            "entries": entries, "calibration": calibration, "networks": networks,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def calibration_networks(space: RoutingSpace | CellSpace, batch: int, dtype: str = "float32",
                         count: int = CALIBRATION_NETWORKS) -> list[tuple[list[str], nn.Module]]:
    """(the key names of its ops, the network) for `count` random networks of the space, always the same
    (the first ones of a larger count too)."""
    rng = random.Random(CALIBRATION_SEED)
    torch.manual_seed(CALIBRATION_SEED)
    archs = [sample_arch(space, rng) for _ in range(count)]
    return [([k.name for k in at_precision([k for _, k in arch_keys(space, arch, batch)], dtype)],
             build_network(space, arch)) for arch in archs]


def _network_ms(op_ms: list[float], overhead: float, scale: float, op_cost: float) -> float:
    return scale * (sum(max(t - overhead - op_cost, 0.0) for t in op_ms) + overhead)


def _fit_ratio(nets: list[tuple[list[float], float]], overhead: float) -> tuple[float, float]:
    return float(np.median([m / _network_ms(ops, overhead, 1.0, 0.0) for ops, m in nets])), 0.0


def _fit_op_cost(nets: list[tuple[list[float], float]], overhead: float) -> tuple[float, float] | None:
    # measured = scale * (sum of (t - overhead) + overhead) - scale * op_cost * (number of ops): linear in
    # scale and scale * op_cost
    rows = np.array([[_network_ms(ops, overhead, 1.0, 0.0), -len(ops)] for ops, _ in nets])
    (scale, scaled_cost), *_ = np.linalg.lstsq(rows, np.array([m for _, m in nets]), rcond=None)
    return (float(scale), float(scaled_cost / scale)) if scale > 0 else None


def fit_network_model(results: pd.DataFrame, networks: list[dict[str, Any]], overhead: float,
                      estimator: str = DEFAULT_ESTIMATOR) -> tuple[float, float, dict[str, Any]]:
    """(network_scale, op_cost_ms, the fit's record) from the calibration networks: see hwnas/latency/table.py.

    Two models compete: a median ratio of measured to summed latency (op cost 0), and a least-squares
    scale with a per-op cost. The one whose predictions of each network, fitted on the others, err
    less wins; a runtime whose per-op call costs nothing beyond the trivial model's keeps the ratio."""
    nets = [([float(results.loc[k, estimator]) for k in net["ops"]], float(results.loc[net["key"], estimator]))
            for net in networks]
    record: dict[str, Any] = {"networks": [
        {"key": net["key"], "ops": len(ops), "ops_sum_ms": _network_ms(ops, overhead, 1.0, 0.0), "measured_ms": m}
        for net, (ops, m) in zip(networks, nets)]}
    if not nets:
        return 1.0, 0.0, record
    models = {"ratio": _fit_ratio, "per_op_cost": _fit_op_cost}
    held_out_error = {}
    for name, fit in models.items():
        errors = []
        for i, (ops, m) in enumerate(nets):
            fitted = fit(nets[:i] + nets[i + 1:], overhead) if len(nets) >= 4 else None
            if fitted is None:
                break
            errors.append(abs(_network_ms(ops, overhead, *fitted) / m - 1))
        if len(errors) == len(nets):
            held_out_error[name] = float(np.mean(errors) * 100)
    best = min(held_out_error, key=held_out_error.get) if held_out_error else "ratio"
    scale, op_cost = models[best](nets, overhead) or _fit_ratio(nets, overhead)
    record.update(model=best, held_out_error_pct=held_out_error)
    return scale, op_cost, record


def read_results(results_csv: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A runner's results CSV and its description JSON beside it."""
    path = Path(results_csv)
    description_path = path.with_suffix(".json")
    if not path.is_file():
        raise LatencyError(f"results file {path} not found")
    if not description_path.is_file():
        raise LatencyError(f"{path} has no description {description_path.name} beside it; copy both files the "
                           "runner wrote")
    description = read_json(description_path, LatencyError, "runner's description")
    try:
        results = pd.read_csv(path, skipinitialspace=True)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LatencyError(f"{path}: cannot read the runner's results ({str(exc).splitlines()[0]})") from None
    needed = ["key", *timing.RESULT_COLUMNS[1:7]]
    if not isinstance(description, dict) or "kit" not in description or any(c not in results for c in needed):
        raise LatencyError(f"{path}: not the output of a kit runner (profilers/*_runner.py) "
                           f"(needs columns {', '.join(needed)} and a description with the kit)")
    try:  # the fields hwnas reads, as their types (a runner's extra fields kept as written)
        description = RunnerDescription.model_validate(description).model_dump(exclude_unset=True)
    except ValidationError as exc:
        raise LatencyError(f"{description_path}: a damaged runner description ({format_validation_error(exc)}); "
                           "copy the file the runner wrote") from None
    if results["key"].duplicated().any():
        raise LatencyError(f"{path}: key {results['key'][results['key'].duplicated()].iloc[0]} appears twice")
    timings = results[needed[1:]].apply(pd.to_numeric, errors="coerce")
    if timings.isna().any().any() or not np.isfinite(timings.to_numpy(dtype=float)).all():
        row = timings.isna().any(axis=1) | ~np.isfinite(timings.to_numpy(dtype=float)).all(axis=1)
        raise LatencyError(f"{path}: key {results['key'][row].iloc[0]} has a timing that is not a finite number")
    results[needed[1:]] = timings
    return results.set_index("key"), description


class _Described(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer runner may say more


class KitInfo(_Described):
    space: str
    fingerprint: str
    batch: int = Field(gt=0)
    dtype: str
    hwnas_version: str


class NetworkEntry(_Described):
    key: str
    ops: list[str]


class DeviceInfo(_Described):
    cpu_model: str = "unknown"
    load_average_1min: float | None = None


class RunnerDescription(_Described):
    """What `hwnas profile ingest` needs of the description a device runner writes beside its results."""

    kit: KitInfo
    space_definition: dict[str, Any]
    calibration_key: str
    networks: list[NetworkEntry] = []
    device: DeviceInfo
    estimator: str = DEFAULT_ESTIMATOR
    runtime: str | None = None
    runtime_version: str | None = None
    provider: str | None = None
    threads: int | None = Field(None, gt=0)
    warmup: int | None = Field(None, ge=0)
    runs: int | None = Field(None, gt=0)
    date: str | None = None
    seconds: float | None = Field(None, ge=0)
    unstable_keys: list[str] = []


def ingest(results_csv: str | Path, out: str | Path, name: str | None = None, force: bool = False,
           allow_busy: bool = False) -> LatencyTable:
    """Turn a runner's results into a latency table for the kit's space."""
    results, description = read_results(results_csv)
    kit = description["kit"]
    space = parse_space(description.get("space_definition"), f"{results_csv} (its space)")
    keys = space_keys(space, int(kit["batch"]), kit["dtype"])
    if fingerprint(keys) != kit["fingerprint"]:
        raise LatencyError(f"{results_csv}: the kit's keys do not match its space {space.name} as hwnas "
                           f"{hwnas.__version__} computes them; make a new kit with `hwnas profile kit`")
    networks = description.get("networks", [])
    extra = sorted(set(results.index) - {k.name for k in keys} - {description["calibration_key"]}
                   - {net["key"] for net in networks})
    if extra:
        raise LatencyError(f"{results_csv}: {len(extra)} result(s) are not keys of {space.name} "
                           f"(e.g. {extra[0]}): this file comes from another kit")
    names = {k.name for k in keys}
    if any(op not in names for net in networks for op in net.get("ops", [])):
        raise LatencyError(f"{results_csv}: its calibration networks use ops outside {space.name}; "
                           "make a new kit with `hwnas profile kit`")
    missing = [k for k in [*(k.name for k in keys), *(net["key"] for net in networks)] if k not in results.index]
    if missing or description["calibration_key"] not in results.index:
        raise LatencyError(f"{results_csv}: {len(missing) or 'the calibration'} key(s) were not measured "
                           f"(e.g. {(missing or [description['calibration_key']])[0]}); run the whole kit again")
    # the statistic the runner could measure: the Python runners' 10th percentile, a benchmark binary's mean
    estimator = description.get("estimator", DEFAULT_ESTIMATOR)
    if estimator not in STAT_COLUMNS:
        raise LatencyError(f"{results_csv}: its description names estimator {estimator!r}; one of {', '.join(STAT_COLUMNS)}")
    overhead = float(results.loc[description["calibration_key"], estimator])
    scale, op_cost, fit = fit_network_model(results, networks, overhead, estimator)
    meta = {
        "space": space.name, "space_definition": description["space_definition"], "batch": int(kit["batch"]),
        "dtype": kit["dtype"],
        "device_name": name or description["device"].get("cpu_model", "unknown"),
        "device": description["device"],
        **{k: description[k] for k in ("runtime", "runtime_version", "provider", "threads", "warmup", "runs",
                                       "date", "seconds", "unstable_keys") if k in description},
        "estimator": estimator, "call_overhead_ms": overhead, "network_scale": scale,
        "op_cost_ms": op_cost, "calibration_networks": fit["networks"],
        "network_fit": {k: fit[k] for k in ("model", "held_out_error_pct") if k in fit}, "kit_hwnas_version": kit["hwnas_version"], "hwnas_version": hwnas.__version__,
        "opset": kit.get("opset"),
    }
    out = Path(out).with_suffix(".csv")
    for path in (out, out.with_suffix(".json")):  # a table is the pair
        if path.exists() and not force:
            raise HwnasError(f"{path} exists; choose another --out or remove it")
    load = description["device"].get("load_average_1min")
    if load is not None and load > MAX_LOAD and not allow_busy:
        raise LatencyError(f"{results_csv}: the device's load average was {load} when profiling started (more than "
                           f"{MAX_LOAD}): something else was running, and its latencies would be too high; profile "
                           "again on a quiet device (or pass --allow-busy to keep such a table)")
    table = make_table(results, keys, meta, str(out))
    save_table(table, out)
    return table


def progress_bar(desc: str, quiet: bool):
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, unit="call", disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True,
               mininterval=1.0)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        if not bar.disable:
            bar.refresh()

    return bar, update


# timed runs per key by precision: int8 ops take a few microseconds, and with 100 runs the int8 table of
# densenas_32_small ranked 50 random networks with Kendall tau 0.89-0.92 (1 of 4 profiles reached 0.9),
# with 300 runs 0.89-0.93 (3 of 4), for 10 s of profiling instead of 4
PROFILE_RUNS = {"float32": 100, "int8": 300}


def profile(space: RoutingSpace | CellSpace, out: str | Path, runtime: Runtime | str = DEFAULT_RUNTIME, name: str | None = None,
            threads: int = 1, batch: int = 1, warmup: int = 10, runs: int | None = None, device: str = "cpu",
            quiet: bool = False, allow_busy: bool = False, dtype: str = "float32") -> dict[str, Any]:
    """Profile every key of `space` on this machine in `runtime`, at `dtype`, and write the table: kit and
    runner in one step. `runs` per key: PROFILE_RUNS of the precision unless given."""
    runtime = get_runtime(runtime) if isinstance(runtime, str) else runtime
    out = Path(out).with_suffix(".csv")
    for path in (out, out.with_suffix(".json")):
        if path.exists():
            raise HwnasError(f"{path} exists; choose another --out or remove it")
    runtime.version()
    runtime.check_device(device)
    runtime.check_precision(dtype)
    load = timing.describe_device()["load_average_1min"]
    if load is not None and load > MAX_LOAD and not allow_busy:
        raise LatencyError(f"this machine's load average is {load} (more than {MAX_LOAD}): something else is "
                           "running, and the table's latencies would be too high; profile when it is quiet "
                           "(or pass --allow-busy to keep such a table)")
    runs = runs or PROFILE_RUNS[dtype]
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="hwnas-profile-") as tmp:
        results_csv = Path(tmp) / "results.csv"
        runtime.profile_here(space, results_csv, threads, batch, warmup, runs, None, device, quiet, dtype)
        # the load was checked before the kit was written: the runner's reading now includes that
        # work, our own, so it is not checked again
        table = ingest(results_csv, out, name, allow_busy=True)
        table.meta["device"]["load_average_before_kit"] = load
    table.meta["seconds"] = round(time.time() - start, 1)
    save_table(table, out)
    return {"table": str(out), "keys": len(table), "seconds": table.meta["seconds"], "runtime": runtime.name,
            "unstable_keys": table.meta.get("unstable_keys", []), "call_overhead_ms": table.overhead_ms}
