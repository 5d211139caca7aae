"""Does a latency table describe this machine, now? Checked before a search uses it on this machine.

A table names the host it was profiled on (profilers/measure.py `host_identity`: CPU model,
instruction-set flags, cores, cache, memory; and the runtime version); a table from another host is
not used here. A table from this host can still be off: another VM of the same model, a different power state, a noisy neighbour at
profiling time. So the table's own calibration networks (a few random networks of its space, rebuilt
from their fixed seed) are timed here with the table's protocol, a few seconds, and compared with
what the table predicts for them:

- within `TOLERANCE` (5%): the table is used as it is;
- off by more, but by about the same factor for every network (`CONSISTENT_SPREAD`):
  the table is rescaled by that factor (its `network_scale`), written beside the run;
- off by different factors: the space is profiled again here.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.latency.table import LatencyTable, table_runtime
from profilers.measure import host_identity

log = logging.getLogger(__name__)

TOLERANCE = 0.05
# interquartile range / median of the per-network ratios within which one factor explains them
CONSISTENT_SPREAD = 0.10
IDENTITY_FIELDS = ("cpu_model", "cpu_flags", "cpu_count", "cache_size", "memory_gb", "machine")


def same_host(table: LatencyTable, runtime_version: str | None = None) -> tuple[bool, list[str]]:
    """Whether the table was profiled on a host like this one with `runtime_version` of its runtime (by
    default the one installed here); what differs."""
    from hwnas.runtimes.base import RuntimeMissing

    if runtime_version is None:
        try:
            runtime_version = table_runtime(table).version()
        except RuntimeMissing:  # then no table of that runtime describes this host as it is
            runtime_version = "not installed"
    recorded = table.meta.get("device") or {}
    here = host_identity()
    differs = [f"{name}: table {recorded.get(name)!r}, here {here.get(name)!r}" for name in IDENTITY_FIELDS
               if recorded.get(name) != here.get(name)]
    if recorded.get("cpu_flags") != here.get("cpu_flags") and "vector_isa" in recorded:
        differs.append(isa_difference(recorded["vector_isa"], here["vector_isa"]))
    if table.meta.get("runtime_version") != runtime_version:
        differs.append(f"runtime version: table {table.meta.get('runtime_version')}, here {runtime_version}")
    return not differs, differs


def isa_difference(table_isa: list[str], here_isa: list[str]) -> str:
    """The vector extensions one host has and the other lacks: what changes a runtime's kernels."""
    only_table = [name for name in table_isa if name not in here_isa]
    only_here = [name for name in here_isa if name not in table_isa]
    if not only_table and not only_here:
        return "vector extensions: the same (" + " ".join(here_isa) + ")"
    return "vector extensions: " + "; ".join(part for part in (
        only_table and "only the table's host has " + " ".join(only_table),
        only_here and "only this host has " + " ".join(only_here)) if part)


def time_networks(networks: dict[str, Any], space, table: LatencyTable, min_runs: int) -> dict[str, float]:
    """Each network's latency here (ms, the table's statistic) with the table's runtime settings, each timed
    in bursts of consecutive calls as a deployed network runs (profilers/measure.py: measure_networks)."""
    from hwnas.latency.networks import input_shape
    from profilers import measure as timing

    with tempfile.TemporaryDirectory(prefix="hwnas-time-") as tmp:
        calls, prepare = table_runtime(table).network_calls(networks, input_shape(space, table.batch),
                                                            int(table.meta["threads"]), Path(tmp), table.dtype)
        results = timing.measure_networks(calls, warmup=int(table.meta.get("warmup", 10)),
                                          runs=max(int(table.meta.get("runs", 50)), min_runs), prepare=prepare)
    return {name: float(stats[table.estimator]) for name, stats in results.items()}


def check_table(table: LatencyTable, space, quiet: bool = True) -> dict[str, Any]:
    """Time the table's calibration networks here and compare them with its predictions (module doc)."""
    from hwnas.latency.keys import space_keys
    from hwnas.latency.kit import CALIBRATION_NETWORKS, calibration_networks

    table.check_for(space.name, space_keys(space, table.batch, table.dtype))
    count = len(table.meta.get("calibration_networks", [])) or CALIBRATION_NETWORKS  # as many as the table was fitted on
    networks = calibration_networks(space, table.batch, table.dtype, count)
    predicted = {f"network:{i}": table.predict_names(ops) for i, (ops, _) in enumerate(networks)}
    if not quiet:
        log.info("timing the table's %d calibration networks here ...", len(networks))
    measured = time_networks({name: model for name, (_, model) in zip(predicted, networks)}, space, table, 50)
    ratios = np.array([measured[name] / predicted[name] for name in predicted])
    ratio = float(np.median(ratios))
    spread = float((np.percentile(ratios, 75) - np.percentile(ratios, 25)) / ratio)
    if abs(ratio - 1) <= TOLERANCE:
        decision = "holds"
    elif spread <= CONSISTENT_SPREAD:
        decision = "rescale"
    else:
        decision = "reprofile"
    return {"decision": decision, "ratio": ratio, "spread": spread, "tolerance": TOLERANCE,
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "networks": [{"key": name, "predicted_ms": predicted[name], "measured_ms": measured[name]}
                         for name in predicted]}


def check_command(table_path: str, space_name: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """`hwnas lut check`: the host comparison and, on a like host, the calibration-network check."""
    from hwnas.latency.table import load_table
    from hwnas.spaces.definition import load_space

    table = load_table(table_path)
    space = load_space(space_name or table.space)
    same, differs = same_host(table)
    report: dict[str, Any] = {"command": "lut check", "table": table.source, "space": space.name,
                              "same_host": same, "differs": differs}
    return {**report, **check_table(table, space, quiet)}


def check_before_search(table_path: str) -> dict[str, Any]:
    """Before a search uses a table: on a host like the one it was profiled on, time its calibration
    networks and warn when they disagree; a table of another device is that device's, not checked here."""
    from hwnas.config import resolve_path
    from hwnas.latency.table import load_table
    from hwnas.runtimes.base import RuntimeMissing
    from hwnas.spaces.definition import load_space, parse_space

    table = load_table(resolve_path(table_path))
    try:
        same, differs = same_host(table)
    except RuntimeMissing as exc:
        return {"checked": False, "differs": [str(exc)]}
    if not same:
        return {"checked": False, "differs": differs}
    definition = table.meta.get("space_definition")
    space = parse_space(definition, table.source) if definition else load_space(table.space)
    result = check_table(table, space)
    if result["decision"] != "holds":
        log.warning("warning: %s predicts this machine's networks at %.2fx what they take here (%s): the search "
                    "aims at the wrong latency; `hwnas lut check --table %s`, then profile again",
                    table.source, 1 / result["ratio"], result["decision"], table.source)
    return {"checked": True, **{k: result[k] for k in ("decision", "ratio", "spread")}}
