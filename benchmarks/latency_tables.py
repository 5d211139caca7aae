"""Latency-table figures, measured on this machine with ONNX Runtime, 1 thread, batch 1.

1. Profiling each space in one step (`hwnas profile`): wall-clock seconds, kit export included.
2. Repeatability: the 224 DenseNAS space profiled twice; share of keys whose median (and 10th
   percentile, what tables predict from) agrees within 5% between the runs.
3. Validation (`hwnas lut validate`) on random networks of each space: share within +-5% / +-10%,
   MAPE, Kendall tau, Spearman rho.

    python benchmarks/latency_tables.py --out benchmarks/results/latency_tables.json [--ship NAME]

`--ship NAME` also copies the first table of each space to latency_tables/NAME/. Run it on a quiet
machine: anything else running adds noise to every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from hwnas.latency.kit import profile
from hwnas.latency.validate import validate
from hwnas.spaces.definition import load_space

SPACES = ("densenas_224", "densenas_32", "darts_cifar10")


def agreement(first: Path, second: Path) -> dict[str, float]:
    a, b = pd.read_csv(first, index_col="key"), pd.read_csv(second, index_col="key")
    out = {}
    for column in ("median_ms", "p10_ms"):
        ratio = (b[column] / a[column] - 1).abs()
        out[f"{column}_within_5pct"] = float((ratio <= 0.05).mean())
        out[f"{column}_within_10pct"] = float((ratio <= 0.10).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/latency_tables.json")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--ship", help="copy the tables to latency_tables/NAME/")
    parser.add_argument("--spaces", nargs="+", default=list(SPACES))
    parser.add_argument("--runs", type=int, default=50, help="timed runs per key (hwnas profile --runs)")
    parser.add_argument("--skip-validate", action="store_true", help="only the profiling figures")
    args = parser.parse_args()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "runtime": "onnxruntime", "threads": 1, "batch": 1, "runs": args.runs,
                    "profile": {}, "validate": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tables = {}
        for name in args.spaces:
            tables[name] = Path(tmp) / f"{name}.csv"
            result = profile(load_space(name), tables[name], "ort", args.ship or "benchmark", runs=args.runs, quiet=True)
            report["profile"][name] = {k: result[k] for k in ("keys", "seconds", "call_overhead_ms")} | {
                "unstable_keys": len(result["unstable_keys"])}
            print(name, report["profile"][name], flush=True)
        if "densenas_224" in tables:
            again = Path(tmp) / "densenas_224_again.csv"
            result = profile(load_space("densenas_224"), again, "ort", "benchmark", runs=args.runs, quiet=True)
            report["repeat_densenas_224"] = {"seconds": result["seconds"], **agreement(tables["densenas_224"], again)}
            print("repeat", report["repeat_densenas_224"], flush=True)
        for name in [] if args.skip_validate else args.spaces:
            result = validate(tables[name], name, args.samples, quiet=True)
            report["validate"][name] = {k: v for k, v in result.items() if k not in ("networks", "table")}
            print(name, report["validate"][name], flush=True)
            report["validate"][name]["networks"] = [
                {k: n[k] for k in ("predicted_ms", "measured_ms", "measured_median_ms")} for n in result["networks"]]
        if args.ship:
            target = Path("latency_tables") / args.ship
            target.mkdir(parents=True, exist_ok=True)
            for name, table in tables.items():
                for suffix in (".csv", ".json"):
                    shutil.copy(table.with_suffix(suffix), target / f"{name}{suffix}")
            report["shipped"] = str(target)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
