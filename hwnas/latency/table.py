"""Latency lookup tables: rows keyed by the full op signature, with their measurement metadata.

A table is two human-readable files side by side: `<space>.csv` (one row per key: the signature
columns, then median, mean, standard deviation, count, coefficient of variation and 10th percentile,
in ms) and `<space>.json` (space, batch, device, CPU model, runtime and version, execution provider, threads,
date, hwnas version, the per-call overhead of the runner).

Prediction uses the column named by `estimator` in the metadata, `p10_ms` by default: the latency on
a quiet device, which repeats within a few percent even on a shared machine (profilers/measure.py).
Each kit model was timed as its own runtime call, which includes the runtime's fixed
per-call cost (`call_overhead_ms`, measured on a trivial model in the same session). A network makes
that call once, and its ops pass tensors to each other inside it instead of copying them in and out,
so a network's latency is `network_scale` x (the sum over its ops of (latency - overhead - `op_cost_ms`),
plus the overhead once). Both numbers are fitted on a few random networks of the space, each timed in
bursts of consecutive calls as a deployed network runs, in the same rounds as the ops (see
`fit_network_model` in hwnas/latency/kit.py): the scale says that ops timed one after another find their
weights colder than a network run again and again does; the per-op cost is what an op's own call
spends beyond the trivial model's (its input and output copies, a delegate's dispatch), about 0.01 ms
with ExecuTorch and LiteRT here and 0 where a median ratio predicts better.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from hwnas.errors import LatencyError
from hwnas.latency.keys import OpKey

log = logging.getLogger(__name__)

TABLE_FORMAT = "hwnas-latency-table"
KEY_COLUMNS = ["key", "op", "c_in", "c_out", "size", "stride", "kernel", "expansion", "batch", "dtype"]
STAT_COLUMNS = ["median_ms", "mean_ms", "std_ms", "count", "cv", "p10_ms"]
COLUMNS = KEY_COLUMNS + STAT_COLUMNS
DEFAULT_ESTIMATOR = "p10_ms"
REQUIRED_META = ("space", "batch", "runtime", "runtime_version", "threads", "call_overhead_ms")


def fingerprint(keys: Iterable[OpKey]) -> str:
    """A short hash of a set of keys: two kits or tables with the same fingerprint need the same rows."""
    return hashlib.sha256("\n".join(sorted(k.name for k in keys)).encode()).hexdigest()[:16]


def table_runtime(table: "LatencyTable"):
    """The runtime (hwnas/runtimes) the table was measured with."""
    from hwnas.errors import HwnasError
    from hwnas.runtimes import get_runtime

    try:
        return get_runtime(str(table.meta.get("runtime")))
    except HwnasError:
        raise LatencyError(f"{table.source} was measured with {table.meta.get('runtime')!r}, a runtime hwnas does not "
                           "know; profile it again with `hwnas profile --runtime ...`") from None


def profile_hint(space: str, batch: int) -> str:
    return (f"profile it with `hwnas profile --space {space} --runtime ort --name DEVICE"
            f"{f' --batch {batch}' if batch != 1 else ''} --out latency_tables/DEVICE/{space}.csv`")


@dataclass
class LatencyTable:
    rows: pd.DataFrame  # indexed by key name, COLUMNS without `key`
    meta: dict[str, Any]
    source: str = "(in memory)"
    _latency: dict[str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._latency = self.rows[self.estimator].astype(float).to_dict()

    @property
    def estimator(self) -> str:
        return str(self.meta.get("estimator", DEFAULT_ESTIMATOR))

    @property
    def space(self) -> str:
        return str(self.meta["space"])

    @property
    def batch(self) -> int:
        return int(self.meta["batch"])

    @property
    def dtype(self) -> str:
        """The precision its ops were measured at: it prices every op at that precision."""
        return str(self.meta.get("dtype", "float32"))

    def _name(self, key: OpKey) -> str:
        return key.name if key.dtype == self.dtype else replace(key, dtype=self.dtype).name

    @property
    def overhead_ms(self) -> float:
        return float(self.meta.get("call_overhead_ms", 0.0))

    @property
    def scale(self) -> float:
        return float(self.meta.get("network_scale", 1.0))

    @property
    def op_cost_ms(self) -> float:
        return float(self.meta.get("op_cost_ms", 0.0))

    def _inside_ms(self, name: str) -> float:
        return max(self._latency[name] - self.overhead_ms - self.op_cost_ms, 0.0)

    def __contains__(self, key: OpKey) -> bool:
        return self._name(key) in self._latency

    def __len__(self) -> int:
        return len(self._latency)

    def missing(self, keys: Iterable[OpKey]) -> list[OpKey]:
        return [k for k in dict.fromkeys(keys) if self._name(k) not in self._latency]

    def require(self, keys: Iterable[OpKey], space: str | None = None) -> None:
        """Raise LatencyError naming the missing keys and the command that profiles them."""
        missing = self.missing(keys)
        if not missing:
            return
        space = space or self.space
        batch = missing[0].batch
        if batch != self.batch:
            raise LatencyError(f"{self.source} was measured at batch {self.batch}, not {batch}; "
                               + profile_hint(space, batch))
        where = (f"; it was profiled for space {self.space}, not {space}" if space != self.space else "")
        shown = ", ".join(self._name(k) for k in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise LatencyError(f"{self.source} lacks {len(missing)} key(s) ({shown}){where}; " + profile_hint(space, batch))

    def check_for(self, space_name: str, keys: Iterable[OpKey], runtime: str | None = None) -> "LatencyTable":
        """Raise LatencyError unless this table was measured with `runtime` and holds every key of the space."""
        if runtime and self.meta.get("runtime") != runtime:
            raise LatencyError(f"{self.source} was measured with {self.meta.get('runtime')}, not {runtime}; "
                               + profile_hint(space_name, self.batch))
        self.require(keys, space_name)
        return self

    def op_ms(self, key: OpKey) -> float:
        """The op's latency inside a network: its measured latency less the costs of its own call, scaled."""
        if self._name(key) not in self._latency:
            self.require([key])
        return self.scale * self._inside_ms(self._name(key))

    def predict(self, keys: Iterable[OpKey]) -> float:
        """Predicted latency (ms) of one network made of `keys` (repeats counted)."""
        keys = list(keys)
        self.require(keys)
        return self.predict_names(self._name(k) for k in keys)

    def predict_names(self, names: Iterable[str]) -> float:
        """`predict` for key names (a kit's calibration networks list theirs)."""
        names = list(names)
        missing = [n for n in names if n not in self._latency]
        if missing:
            raise LatencyError(f"{self.source} lacks key {missing[0]}")
        return self.scale * (sum(self._inside_ms(n) for n in names) + self.overhead_ms)

    def rescaled(self, factor: float, reason: dict[str, Any]) -> "LatencyTable":
        """The same table with every prediction times `factor` (its `network_scale`), saying why."""
        meta = {**self.meta, "network_scale": self.scale * factor,
                "rescaled": {"from": self.source, "factor": factor, **reason}}
        return LatencyTable(self.rows, meta, self.source)


def make_table(results: pd.DataFrame, keys: list[OpKey], meta: dict[str, Any], source: str = "(in memory)") -> LatencyTable:
    """A table from measured statistics (`results` indexed by key name) for exactly `keys`."""
    rows = pd.DataFrame([k.fields() for k in keys]).set_index("key")
    rows = rows.join(results[STAT_COLUMNS], how="left")
    table = LatencyTable(rows, {"format": TABLE_FORMAT, **meta, "fingerprint": fingerprint(keys)}, source)
    _check_rows(table.rows, source)
    return table


def save_table(table: LatencyTable, path: str | Path) -> Path:
    """Write `<path>.csv` and `<path>.json` (each atomically)."""
    from hwnas.runs import atomic_write, write_json

    path = Path(path).with_suffix(".csv")
    rows = table.rows.reset_index()[COLUMNS]
    atomic_write(path, lambda f: rows.to_csv(f, index=False, float_format="%.6g"))
    write_json(path.with_suffix(".json"), table.meta)
    table.source = str(path)
    return path


def _check_rows(rows: pd.DataFrame, source: str) -> None:
    for column in STAT_COLUMNS:
        values = pd.to_numeric(rows[column], errors="coerce")
        bad = rows.index[values.isna() | ~values.map(math.isfinite)] if column != "count" else rows.index[values.isna()]
        if len(bad):
            raise LatencyError(f"{source}: {column} is missing or not a number for {len(bad)} key(s), e.g. {bad[0]}; "
                               "re-profile those keys")
    for column in ("median_ms", "mean_ms", "p10_ms"):
        bad = rows.index[rows[column].astype(float) <= 0]
        if len(bad):
            raise LatencyError(f"{source}: {column} must be positive, but is {rows.loc[bad[0], column]} for {bad[0]}; "
                               "re-profile that key")
    bad = rows.index[(rows["std_ms"].astype(float) < 0) | (rows["count"].astype(float) < 1)]
    if len(bad):
        raise LatencyError(f"{source}: negative std_ms or count below 1 for {bad[0]}")


def load_table(path: str | Path) -> LatencyTable:
    """Read and check a table (`.csv` with its `.json` beside it); warn if it was measured on another CPU."""
    from hwnas.config import resolve_path

    path = resolve_path(Path(path).with_suffix(".csv") if Path(path).suffix != ".csv" else path)
    meta_path = path.with_suffix(".json")
    if not path.is_file():
        raise LatencyError(f"latency table {path} not found; make one with `hwnas profile --space SPACE "
                           "--runtime ort --name DEVICE --out TABLE.csv`")
    if not meta_path.is_file():
        raise LatencyError(f"{path} has no metadata file {meta_path.name} beside it; re-ingest the results "
                           "with `hwnas profile ingest`")
    from hwnas.files import read_json

    meta = read_json(meta_path, LatencyError, "table description")
    if not isinstance(meta, dict) or meta.get("format") != TABLE_FORMAT:
        raise LatencyError(f"{meta_path}: not an hwnas latency table description (format {TABLE_FORMAT!r})")
    absent = [k for k in REQUIRED_META if k not in meta]
    if absent:
        raise LatencyError(f"{meta_path}: missing {', '.join(absent)}")
    try:
        rows = pd.read_csv(path, skipinitialspace=True)  # `key, op, ...` reads as `key,op,...`
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LatencyError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    absent = [c for c in COLUMNS if c not in rows.columns]
    if absent:
        raise LatencyError(f"{path}: missing column(s) {', '.join(absent)}; a table has {', '.join(COLUMNS)}")
    duplicated = rows["key"][rows["key"].duplicated()]
    if len(duplicated):
        raise LatencyError(f"{path}: key {duplicated.iloc[0]} appears more than once")
    for record in rows[KEY_COLUMNS].to_dict("records"):
        try:
            key = OpKey(str(record["op"]), int(record["c_in"]), int(record["c_out"]), int(record["size"]),
                        int(record["stride"]), int(record["batch"]), str(record["dtype"]))
            consistent = key.name == record["key"] and (key.kernel, key.expansion) == (record["kernel"], record["expansion"])
        except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite number where an integer belongs
            consistent = False
        if not consistent:
            raise LatencyError(f"{path}: row {record['key']} does not match its signature columns")
    rows = rows.set_index("key")[COLUMNS[1:]]
    _check_rows(rows, str(path))  # before the table reads its statistic as numbers
    table = LatencyTable(rows, meta, str(path))
    _warn_other_cpu(table)
    return table


def _warn_other_cpu(table: LatencyTable) -> None:
    from profilers.measure import cpu_model

    measured_on = (table.meta.get("device") or {}).get("cpu_model")
    if measured_on and measured_on != cpu_model():
        log.warning("warning: %s was measured on %s, not this machine's %s; its latencies describe that device",
                    table.source, measured_on, cpu_model())
