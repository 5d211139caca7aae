"""Where int8 pays, op by op: a float32 and an int8 latency table of the same space, runtime and host,
compared key by key (the int8 speed-up of each op signature, by op type and by input size).

    python benchmarks/int8_op_speedup.py --float32 FLOAT_TABLE.csv --int8 INT8_TABLE.csv \
        --out benchmarks/results/int8_op_speedup.json

A network is as much faster in int8 as its ops are, less the quantize/dequantize steps at the edges of
int8 regions, so where (nearly) every op is slower in int8, no choice of int8 layers makes the network
much faster. Both tables must come from one host (their instruction-set fingerprints are compared).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hwnas.latency.table import load_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float32", required=True)
    parser.add_argument("--int8", required=True)
    parser.add_argument("--out", default="benchmarks/results/int8_op_speedup.json")
    args = parser.parse_args()
    tables = {"float32": load_table(args.float32), "int8": load_table(args.int8)}
    hosts = {name: t.meta["device"].get("cpu_flags") for name, t in tables.items()}
    if len(set(hosts.values())) != 1 or None in hosts.values():
        sys.exit(f"the tables come from different (or unknown) hosts: {hosts}")
    estimator = tables["float32"].estimator
    rows = tables["float32"].rows
    int8 = tables["int8"].rows.rename(index=lambda key: key.replace(":int8", ":float32"))
    common = rows.index.intersection(int8.index)
    speedup = (rows.loc[common, estimator] / int8.loc[common, estimator]).rename("speedup")
    frame = rows.loc[common, ["op", "size"]].join(speedup)

    def summary(column: str) -> dict:
        return {str(k): {"median_speedup": round(float(g.median()), 3), "keys": int(g.size)}
                for k, g in frame.groupby(column)["speedup"]}

    result = {
        "float32_table": args.float32, "int8_table": args.int8, "host_fingerprint": hosts["float32"],
        "estimator": estimator, "keys": int(len(common)),
        "median_speedup": round(float(speedup.median()), 3),
        "keys_faster_in_int8": int((speedup > 1).sum()),
        "by_op": summary("op"), "by_input_size": summary("size"),
        "tables": {name: {k: t.meta.get(k) for k in ("date", "runs", "runtime", "runtime_version")} |
                   {"load_average_1min": t.meta["device"].get("load_average_1min")} for name, t in tables.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("keys", "median_speedup", "keys_faster_in_int8", "by_op")}))


if __name__ == "__main__":
    main()
