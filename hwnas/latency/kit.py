"""Profiling kits (one small model per latency key, in one runtime's format), ingesting a runner's results into a table,
and the one-step local form that does both on this machine.

A kit is a folder: `manifest.json` (space, its definition and key fingerprint, batch, opset, and one
entry per key: key, model file, input shape) and `models/`. Each model is the op exported in eval mode,
so BN is folded into the conv exactly as it is in a deployed network. The kit also carries a trivial
model whose time is the runtime's fixed per-call cost, and a few random whole networks of the space:
measured in the same rounds, they calibrate one scale factor from the sum of op latencies to the
latency of a network (see `network_scale` in hwnas/latency/table.py).
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
from hwnas.latency.keys import build_op, space_keys
from hwnas.latency.networks import arch_keys, build_network, input_shape, sample_arch
from hwnas.latency.table import DEFAULT_ESTIMATOR, STAT_COLUMNS, LatencyTable, fingerprint, make_table, save_table
from hwnas.spaces.definition import CellSpace, RoutingSpace, parse_space
from hwnas.runtimes import FileRuntime, Runtime, get_runtime
from profilers import measure as timing
from profilers.runner import KIT_FORMAT

log = logging.getLogger(__name__)

CALIBRATION_KEY = "call_overhead"
CALIBRATION_NETWORKS = 8
CALIBRATION_SEED = 1000  # `hwnas lut validate` samples its networks with other seeds
# a table is refused when the device's 1-minute load average exceeded this as profiling started: one other
# busy process adds about 1, and two busy processes slow each other several-fold on a small CPU
# (HWNAS_MAX_PROFILE_LOAD changes it: the test suite, itself a busy process, raises it)
MAX_LOAD = float(os.environ.get("HWNAS_MAX_PROFILE_LOAD", "0.5"))


def _fresh_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HwnasError(f"{out} exists and is not empty; choose another --out or remove it")


def build_kit(space: RoutingSpace | CellSpace, out: str | Path, batch: int = 1, runtime: Runtime | str = "ort",
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write one model per latency key of `space` in `runtime`'s format into `out` (written whole, then
    moved into place)."""
    out = Path(out)
    _fresh_dir(out)
    runtime = get_runtime(runtime) if isinstance(runtime, str) else runtime
    if not isinstance(runtime, FileRuntime):
        raise HwnasError(f"the {runtime.name} runtime has no model files to put in a kit: profile here with "
                         f"`hwnas profile --runtime {runtime.name}`, or run profilers/torch_runner.py on any kit")
    runtime.version()  # refused before anything is written when the runtime is not installed
    if batch < 1:
        raise HwnasError(f"--batch must be at least 1, got {batch}")
    keys = space_keys(space, batch)
    staging = Path(tempfile.mkdtemp(prefix=".kit-", dir=out.parent if out.parent.exists() else None))
    try:
        (staging / "models").mkdir()
        entries = []
        for i, key in enumerate(keys):
            file = f"models/{i:04d}_{key.op}{runtime.suffix}"
            runtime.save(build_op(key), key.input_shape, staging / file)
            entries.append({"key": key.name, "file": file, "input_shape": list(key.input_shape)})
            if progress:
                progress(i + 1, len(keys))
        calibration = {"key": CALIBRATION_KEY, "file": f"models/calibration{runtime.suffix}",
                       "input_shape": [batch, 1, 1, 1]}
        runtime.save(nn.ReLU(), (batch, 1, 1, 1), staging / calibration["file"])
        (staging / "networks").mkdir()
        networks = []
        for i, (ops, model) in enumerate(calibration_networks(space, batch)):
            networks.append({"key": f"network:{i}", "file": f"networks/{i}{runtime.suffix}",
                             "input_shape": list(input_shape(space, batch)), "ops": ops})
            runtime.save(model, input_shape(space, batch), staging / networks[-1]["file"])
        manifest = {
            "format": KIT_FORMAT, "space": space.name, "space_definition": space.model_dump(mode="json"),
            "fingerprint": fingerprint(keys), "batch": batch, "dtype": "float32", "opset": runtime.opset,
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


def calibration_networks(space: RoutingSpace | CellSpace, batch: int) -> list[tuple[list[str], nn.Module]]:
    """(the key names of its ops, the network) for a few random networks of the space, always the same."""
    rng = random.Random(CALIBRATION_SEED)
    torch.manual_seed(CALIBRATION_SEED)
    archs = [sample_arch(space, rng) for _ in range(CALIBRATION_NETWORKS)]
    return [([k.name for _, k in arch_keys(space, arch, batch)], build_network(space, arch)) for arch in archs]


def network_scale(results: pd.DataFrame, networks: list[dict[str, Any]], overhead: float,
                  estimator: str = DEFAULT_ESTIMATOR) -> tuple[float, list]:
    """The median ratio of measured network latency to the sum of its ops (each less the per-call
    overhead, plus the overhead once), over the calibration networks; 1 when there are none."""
    fits = []
    for net in networks:
        ops_sum = sum(max(float(results.loc[k, estimator]) - overhead, 0.0) for k in net["ops"]) + overhead
        fits.append({"key": net["key"], "ops_sum_ms": ops_sum, "measured_ms": float(results.loc[net["key"], estimator])})
    ratios = sorted(f["measured_ms"] / f["ops_sum_ms"] for f in fits)
    return (float(np.median(ratios)) if ratios else 1.0), fits


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
    try:
        RunnerDescription.model_validate(description)
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


class RunnerDescription(_Described):
    """What `hwnas profile ingest` needs of the description a device runner writes beside its results."""

    kit: KitInfo
    space_definition: dict[str, Any]
    calibration_key: str
    networks: list[NetworkEntry] = []
    device: dict[str, Any]


def ingest(results_csv: str | Path, out: str | Path, name: str | None = None, force: bool = False,
           allow_busy: bool = False) -> LatencyTable:
    """Turn a runner's results into a latency table for the kit's space."""
    results, description = read_results(results_csv)
    kit = description["kit"]
    space = parse_space(description.get("space_definition"), f"{results_csv} (its space)")
    keys = space_keys(space, int(kit["batch"]))
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
    scale, fits = network_scale(results, networks, overhead, estimator)
    meta = {
        "space": space.name, "space_definition": description["space_definition"], "batch": int(kit["batch"]),
        "dtype": kit["dtype"],
        "device_name": name or description["device"].get("cpu_model", "unknown"),
        "device": description["device"],
        **{k: description[k] for k in ("runtime", "runtime_version", "provider", "threads", "warmup", "runs",
                                       "date", "seconds", "unstable_keys") if k in description},
        "estimator": estimator, "call_overhead_ms": overhead, "network_scale": scale,
        "calibration_networks": fits, "kit_hwnas_version": kit["hwnas_version"], "hwnas_version": hwnas.__version__,
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


def profile(space: RoutingSpace | CellSpace, out: str | Path, runtime: Runtime | str = "ort", name: str | None = None,
            threads: int = 1, batch: int = 1, warmup: int = 10, runs: int = 100, device: str = "cpu",
            quiet: bool = False, allow_busy: bool = False) -> dict[str, Any]:
    """Profile every key of `space` on this machine in `runtime` and write the table: kit and runner in one step."""
    runtime = get_runtime(runtime) if isinstance(runtime, str) else runtime
    out = Path(out).with_suffix(".csv")
    for path in (out, out.with_suffix(".json")):
        if path.exists():
            raise HwnasError(f"{path} exists; choose another --out or remove it")
    runtime.version()
    runtime.check_device(device)
    load = timing.describe_device()["load_average_1min"]
    if load is not None and load > MAX_LOAD and not allow_busy:
        raise LatencyError(f"this machine's load average is {load} (more than {MAX_LOAD}): something else is "
                           "running, and the table's latencies would be too high; profile when it is quiet "
                           "(or pass --allow-busy to keep such a table)")
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="hwnas-profile-") as tmp:
        results_csv = Path(tmp) / "results.csv"
        runtime.profile_here(space, results_csv, threads, batch, warmup, runs, None, device, quiet)
        # the load was checked before the kit was written: the runner's reading now includes that
        # work, our own, so it is not checked again
        table = ingest(results_csv, out, name, allow_busy=True)
        table.meta["device"]["load_average_before_kit"] = load
    table.meta["seconds"] = round(time.time() - start, 1)
    save_table(table, out)
    return {"table": str(out), "keys": len(table), "seconds": table.meta["seconds"], "runtime": runtime.name,
            "unstable_keys": table.meta.get("unstable_keys", []), "call_overhead_ms": table.overhead_ms}
