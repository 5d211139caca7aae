"""Check a latency table against whole networks, and predict one architecture's latency.

`validate` samples random architectures of a space, builds and exports each final network, measures
them end to end with the runner settings the table was made with (interleaved, the same statistic),
and compares with the table's predictions: share within +-5% and +-10%, mean absolute percentage
error, Kendall tau and Spearman rho.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from hwnas.errors import HwnasError
from hwnas.latency.check import same_host
from hwnas.latency.keys import space_keys
from hwnas.latency.networks import Arch, arch_keys, build_network, input_shape, sample_arch
from hwnas.latency.table import LatencyTable, load_table, table_runtime
from hwnas.kinds import load_arch
from hwnas.kinds import kind_of
from hwnas.spaces.definition import CellSpace, RoutingSpace, load_space
from profilers import measure as timing


def predict(table: LatencyTable, space: RoutingSpace | CellSpace, arch: Arch) -> dict[str, Any]:
    """Predicted latency of `arch` and its breakdown by part (stem, block, cell, classifier)."""
    parts = arch_keys(space, arch, table.batch)
    table.require([k for _, k in parts], space.name)
    breakdown: dict[str, float] = {}
    for part, key in parts:
        breakdown[part] = breakdown.get(part, 0.0) + table.op_ms(key)
    return {"predicted_ms": table.predict(k for _, k in parts), "call_overhead_ms": table.overhead_ms,
            "breakdown_ms": breakdown, "table": table.source, "estimator": table.estimator}


def agreement(predicted: list[float], measured: list[float]) -> dict[str, float]:
    p, m = np.asarray(predicted), np.asarray(measured)
    error = (p - m) / m
    return {
        "within_5pct": float(np.mean(np.abs(error) <= 0.05)), "within_10pct": float(np.mean(np.abs(error) <= 0.10)),
        "mape_pct": float(np.mean(np.abs(error)) * 100), "mean_error_pct": float(np.mean(error) * 100),
        "kendall_tau": float(stats.kendalltau(p, m).statistic), "spearman_rho": float(stats.spearmanr(p, m).statistic),
    }


def validate(table_path: str | Path, space_name: str | Path, samples: int = 50, seed: int = 0,
             plot: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    if samples < 3:
        raise HwnasError(f"--samples must be at least 3 (for rank correlations), got {samples}")
    if plot and (Path(plot).suffix != ".png" or Path(plot).exists()):
        raise HwnasError(f"--plot {plot}: give a new file name ending in .png (checked before measuring; "
                         "an existing file is never overwritten)")
    table = load_table(table_path)
    space = load_space(space_name)
    table.check_for(space.name, space_keys(space, table.batch, table.dtype))
    runtime = table_runtime(table)
    runtime.version()
    rng = random.Random(seed)
    archs = {f"arch{i:03d}": sample_arch(space, rng) for i in range(samples)}
    predicted = {name: predict(table, space, arch)["predicted_ms"] for name, arch in archs.items()}
    shape = input_shape(space, table.batch)
    torch.manual_seed(seed)
    from hwnas.latency.kit import progress_bar

    with tempfile.TemporaryDirectory(prefix="hwnas-validate-") as tmp:
        networks = {name: build_network(space, arch) for name, arch in archs.items()}
        calls, prepare = runtime.network_calls(networks, shape, int(table.meta["threads"]), Path(tmp), table.dtype)
        bar, update = progress_bar("measuring networks", quiet)
        with bar:
            # in bursts of consecutive calls, as a deployed network runs and as the table's calibration networks were timed
            results = timing.measure_networks(calls, warmup=int(table.meta.get("warmup", 10)),
                                           runs=int(table.meta.get("runs", 50)), progress=update, prepare=prepare)
    measured = {name: results[name][table.estimator] for name in archs}
    names = list(archs)
    # on another host the errors measure the two hosts' difference as much as the table
    same, differs = same_host(table)
    report = {
        "table": table.source, "space": space.name, "samples": samples, "seed": seed, "estimator": table.estimator,
        "same_host": same, "differs": differs,
        "runtime": runtime.name, "threads": int(table.meta["threads"]), "call_overhead_ms": table.overhead_ms,
        **agreement([predicted[n] for n in names], [measured[n] for n in names]),
        "networks": [{"name": n, "predicted_ms": predicted[n], "measured_ms": measured[n],
                      "measured_median_ms": results[n]["median_ms"], "stable": results[n]["stable"],
                      "arch": archs[n].to_dict()} for n in names],
    }
    if plot:
        from hwnas.plots import plot_predicted_vs_measured

        plot_predicted_vs_measured([predicted[n] for n in names], [measured[n] for n in names], Path(plot),
                                   f"{space.name}: {samples} random networks ({runtime.name}, {report['threads']} thread)")
        report["plot"] = str(plot)
    return report


def predict_command(table_path: str | Path, arch: str | Path, space_name: str | Path | None = None) -> dict[str, Any]:
    table = load_table(table_path)
    architecture = load_arch(arch)
    space = load_space(space_name or kind_of(architecture).space_name(architecture) or table.space)
    return {"arch": str(arch), "space": space.name, **predict(table, space, architecture)}
