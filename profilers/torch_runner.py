"""Measure a profiling kit's keys with PyTorch eager on CPU or CUDA (synchronised timing on CUDA).

Unlike ort_runner.py this needs torch and hwnas on the device (it builds each op from its key):

    python profilers/torch_runner.py KIT_DIR --out results.csv [--device cuda] [--threads 1]

then `hwnas profile ingest results.csv --out TABLE` as for the ONNX Runtime runner.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__:
    from . import measure as timing
    from .ort_runner import KitError, read_manifest
else:  # run as a script from a copied profilers/ folder
    import measure as timing  # type: ignore[no-redef]
    from ort_runner import KitError, read_manifest  # type: ignore[no-redef]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time every key of an hwnas profiling kit with PyTorch eager.")
    parser.add_argument("kit", help="kit folder made by `hwnas profile kit` (only its manifest is read)")
    parser.add_argument("--out", required=True, help="results CSV (its description goes beside it as .json)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        print(f"torch_runner: error: {args.out} exists; choose another --out or remove it", file=sys.stderr)
        return 2
    try:
        from hwnas.errors import HwnasError
        from hwnas.runtimes.torch_eager import torch_profile
        from hwnas.latency.table import fingerprint
        from hwnas.latency.keys import space_keys
        from hwnas.spaces.definition import parse_space

        manifest = read_manifest(args.kit)
        space = parse_space(manifest["space_definition"], f"{args.kit} (its space)")
        if fingerprint(space_keys(space, manifest["batch"])) != manifest["fingerprint"]:
            raise KitError("this kit was made by another hwnas version; make a new one with `hwnas profile kit`")
        description = torch_profile(space, Path(args.out), args.device, args.threads, manifest["batch"],
                                    args.warmup, args.runs, progress=timing.ProgressPrinter())
    except (KitError, HwnasError, ValueError) as exc:
        print(f"torch_runner: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}; unstable keys: {len(description['unstable_keys'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
