"""Latency tables for another runtime on this machine, and how well they predict whole networks.

For each space: its kit in the runtime's format (kept in --kits, as writing a kit of ExecuTorch or LiteRT
models takes minutes), measured by the runtime's device-side runner, ingested into a shipped table
(latency_tables/NAME/SPACE.csv), then `hwnas lut validate` on --samples random networks of the space,
each built, converted and timed end to end in the runtime. Every finished step is kept and reused, so
the script resumes where it stopped. Run it in an environment with the runtime's extra, on a quiet
machine (the load average before and after each measurement is recorded):

    python benchmarks/runtime_tables.py --runtime executorch --ship amd-epyc-2core-executorch-1thread
    python benchmarks/runtime_tables.py --runtime litert --ship amd-epyc-2core-litert-1thread
    python benchmarks/runtime_tables.py --runtime ort --precision int8 --spaces densenas_32_small \
        --ship amd-epyc-2core-ort-int8-1thread                      # an int8 table (quantized micro-models)

Every measurement records the host's instruction-set fingerprint (`cpu_flags`): a table validated on
another host than it was profiled on measures the hosts' difference too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from hwnas.latency.kit import PROFILE_RUNS, build_kit, ingest
from hwnas.latency.validate import validate
from hwnas.runtimes import get_runtime
from hwnas.spaces.definition import load_space
from profilers import measure as timing
from profilers.runner import run_kit


def load() -> float:
    return round(os.getloadavg()[0], 2)


def wait_until_quiet(limit: float = 0.4, patience_s: float = 600) -> None:
    """Profiling refuses a device whose load average is above 0.5; the previous step's own work leaves
    the average high for a minute or two, and loading the runtime raises it again: wait for some margin."""
    waited = 0
    while load() > limit and waited < patience_s:
        time.sleep(10)
        waited += 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", required=True, choices=["ort", "executorch", "litert"])
    parser.add_argument("--ship", required=True, help="the tables go to latency_tables/SHIP/")
    parser.add_argument("--spaces", nargs="+", default=["densenas_32_small", "densenas_224"])
    parser.add_argument("--kits", default="benchmarks/runs/kits", help="where the kits are kept")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--runs", type=int, help="timed runs per key (default: hwnas profile's for the precision)")
    parser.add_argument("--out", default="benchmarks/results/runtime_tables.json")
    parser.add_argument("--precision", choices=["float32", "int8"], default="float32")
    parser.add_argument("--kits-only", action="store_true",
                        help="build the kits and stop: that needs no quiet machine, the measurements do")
    args = parser.parse_args()
    runtime = get_runtime(args.runtime)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    entry = report.setdefault(runtime.name, {})
    at = "" if args.precision == "float32" else f"_{args.precision}"
    for name in args.spaces:
        space = load_space(name)
        kit = Path(args.kits) / f"{runtime.name}_{name}{at}"
        table = Path("latency_tables") / args.ship / f"{name}.csv"
        row = entry.setdefault(name + at.replace("_", ":"), {})
        # a kit is only needed to profile: a table already shipped is validated without one
        if (args.kits_only or not table.is_file()) and not (kit / "manifest.json").is_file():
            started = time.perf_counter()
            build_kit(space, kit, 1, runtime, dtype=args.precision)
            row["kit_seconds"] = round(time.perf_counter() - started, 1)
        if args.kits_only:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
            continue
        if not table.is_file():
            # the runner's results are kept beside the kit: a table refused at ingest (a busy device) is
            # measured again, never lost unseen
            results = kit.parent / f"{kit.name}-results.csv"
            wait_until_quiet()
            before = load()
            description = run_kit(runtime.device, kit, results, 1, 10, args.runs or PROFILE_RUNS[args.precision])
            table.parent.mkdir(parents=True, exist_ok=True)
            made = ingest(results, table, args.ship)
            row["profile"] = {"keys": len(made), "seconds": description["seconds"], "load_before": before,
                              "load_after": load(), "unstable_keys": len(description["unstable_keys"]),
                              "call_overhead_ms": made.overhead_ms, "network_scale": made.scale, "op_cost_ms": made.op_cost_ms,
                              "network_fit": made.meta["network_fit"],
                              "cpu_model": timing.cpu_model(), "cpu_flags": made.meta["device"]["cpu_flags"],
                              "runtime_version": made.meta["runtime_version"]}
            print(name, row["profile"], flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
        if "validate" not in row:
            wait_until_quiet()
            before = load()
            started = time.perf_counter()
            result = validate(table, name, args.samples, quiet=True)
            row["validate"] = {**{k: v for k, v in result.items() if k not in ("networks",)},
                               "seconds": round(time.perf_counter() - started, 1), "load_before": before,
                               "load_after": load(), "cpu_model": timing.cpu_model(),
                               "cpu_flags": timing.host_identity()["cpu_flags"],
                               "networks": [{k: n[k] for k in ("predicted_ms", "measured_ms", "measured_median_ms")}
                                            for n in result["networks"]]}
            print(name, {k: v for k, v in row["validate"].items() if k != "networks"}, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
