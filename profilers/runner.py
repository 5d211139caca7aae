"""What every device-side kit runner shares: reading a kit's manifest, timing its models with one runtime,
writing the results and their description, and the command line. Needs only the Python standard library
and numpy; each runner adds its runtime's package.

A runner is a small module with a `RUNTIME` object:
- `name`: the runtime as tables record it (`onnxruntime`, `executorch`, `litert`);
- `suffix`: the model files it reads (`.onnx`, `.pte`, `.tflite`);
- `version()`: the runtime package's version; raises KitError when the package is missing;
- `load(path, threads)`: a loaded model with `run(x) -> y` (a fresh output array, for parity checks) and
  `bound(x)`: a zero-argument call that runs it on `x` into the runtime's own output buffer, the call
  that is timed;
- `describe(threads)`: what the description records of the runtime (`provider` or delegate, threads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__:
    from . import measure as timing
else:  # run as a script from a copied profilers/ folder
    import measure as timing  # type: ignore[no-redef]

KIT_FORMAT = "hwnas-profiling-kit"


class KitError(Exception):
    pass


def read_manifest(kit_dir: str | Path, runtime_name: str | None = None) -> dict:
    """The kit's manifest, checked: its models list, their files, and (given `runtime_name`) that it was
    made for that runtime. Kits made before kits named their runtime are ONNX Runtime kits."""
    path = Path(kit_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise KitError(f"{path} is not UTF-8 text, so not a kit manifest") from None
    except OSError:
        raise KitError(f"{path} not found: make a kit with `hwnas profile kit --space SPACE --out {kit_dir}`") from None
    except ValueError as exc:
        raise KitError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != KIT_FORMAT or "entries" not in manifest:
        raise KitError(f"{path} is not an hwnas profiling kit manifest")
    kit_runtime = manifest.setdefault("runtime", "onnxruntime")
    if runtime_name is not None and kit_runtime != runtime_name:
        raise KitError(f"{kit_dir} is a kit for {kit_runtime}, not {runtime_name}: run it with "
                       f"profilers/{RUNNER_OF.get(kit_runtime, '<its runner>')}, or make a {runtime_name} kit with "
                       f"`hwnas profile kit --runtime ...`")
    entries = manifest["entries"]
    models = [*entries, manifest.get("calibration"), *manifest.get("networks", [])] if isinstance(entries, list) else None
    if not models or not all(_is_model_entry(e) for e in models):
        raise KitError(f"{path}: the list of models is damaged (each needs a key, a file and an input shape); "
                       "make the kit again with `hwnas profile kit`")
    missing = [e["file"] for e in models if not (Path(kit_dir) / e["file"]).is_file()]
    if missing:
        raise KitError(f"{Path(kit_dir) / missing[0]} is missing ({len(missing)} model file(s) in all); copy the whole kit")
    for key in ("space", "fingerprint", "batch", "dtype", "hwnas_version", "space_definition"):
        if key not in manifest:
            raise KitError(f"{path} lacks `{key}`; make the kit again with `hwnas profile kit`")
    return manifest


RUNNER_OF = {"onnxruntime": "ort_runner.py", "executorch": "executorch_runner.py", "litert": "litert_runner.py"}


def _is_model_entry(entry: object) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("file"), str)
            and isinstance(entry.get("input_shape"), list) and 0 < len(entry["input_shape"]) <= 6
            and all(type(n) is int and 0 < n <= 4096 for n in entry["input_shape"]))


def kit_calls(runtime: Any, kit_dir: str | Path, manifest: dict, threads: int
              ) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[], object]]]:
    """One zero-argument call per kit entry (and the calibration models), each its own loaded model, and
    for each a preparation that reads its input, so the input is in cache as the previous op's output is
    inside a network, while the weights are not."""
    rng = np.random.default_rng(0)
    calls, prepare = {}, {}
    for entry in [*manifest["entries"], manifest["calibration"], *manifest.get("networks", [])]:
        path = Path(kit_dir) / entry["file"]
        x = rng.standard_normal(entry["input_shape"]).astype(np.float32)
        try:
            calls[entry["key"]] = runtime.load(path, threads).bound(x)
        except KitError:
            raise
        except Exception as exc:  # the runtime's own errors (a damaged model, an input it does not take)
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise KitError(f"{path}: {runtime.name} cannot run it ({first}); make the kit again") from None
        prepare[entry["key"]] = x.sum
    return calls, prepare


def run_kit(runtime: Any, kit_dir: str | Path, out: str | Path, threads: int = 1, warmup: int = 10, runs: int = 100,
            max_cv: float = 0.25, progress: Callable[[int, int], None] | None = None) -> dict:
    """Measure every model of the kit; write `out` (CSV) and its description beside it (`.json`)."""
    manifest = read_manifest(kit_dir, runtime.name)
    version = runtime.version()
    start = time.time()
    device = timing.describe_device()  # before measuring: the load average then is the device's own, not ours
    calls, prepare = kit_calls(runtime, kit_dir, manifest, threads)
    networks = {n["key"] for n in manifest.get("networks", [])}
    # the calibration networks in the ops' rounds, in bursts (measure.py): both see the same states of the device
    results = timing.measure(calls, warmup=warmup, runs=runs, max_cv=max_cv, progress=progress, prepare=prepare,
                             burst={key: timing.NETWORK_BURST for key in networks})
    out = Path(out)
    timing.write_results(out, results)
    description = {
        "kit": {k: manifest.get(k) for k in ("space", "fingerprint", "batch", "dtype", "opset", "hwnas_version",
                                             "runtime")},
        "space_definition": manifest["space_definition"],
        "calibration_key": manifest["calibration"]["key"], "networks": manifest.get("networks", []),
        "device": device, "runtime": runtime.name, "runtime_version": version, **runtime.describe(threads),
        "warmup": warmup, "runs": runs, "max_cv": max_cv,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - start, 1),
        "unstable_keys": [key for key, stats in results.items() if not stats["stable"]],
    }
    out.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def main(runtime: Any, argv: list[str] | None = None, options: Callable[[argparse.ArgumentParser], None] | None = None
         ) -> int:
    """The runner's command line: `python profilers/<runner>.py KIT_DIR --out results.csv [...]`."""
    prog = Path(sys.argv[0]).stem if argv is None else RUNNER_OF.get(runtime.name, "runner").removesuffix(".py")
    parser = argparse.ArgumentParser(prog=prog, description=f"Time every model of an hwnas profiling kit with {runtime.name}.")
    parser.add_argument("kit", help="kit folder made by `hwnas profile kit`")
    parser.add_argument("--out", required=True, help="results CSV (its description goes beside it as .json)")
    parser.add_argument("--threads", type=int, default=1, help="the runtime's threads (default 1)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per model first (default 10)")
    parser.add_argument("--runs", type=int, default=100,
                        help="timed runs per model, one per interleaved round (default 100)")
    parser.add_argument("--max-cv", type=float, default=0.25, help="re-measure keys noisier than this")
    if options:
        options(parser)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        print(f"{prog}: error: need --threads >= 1, --runs >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if Path(args.out).exists():
        print(f"{prog}: error: {args.out} exists; choose another --out or remove it", file=sys.stderr)
        return 2
    try:
        if hasattr(runtime, "configure"):
            runtime.configure(args)
        description = run_kit(runtime, args.kit, args.out, args.threads, args.warmup, args.runs, args.max_cv,
                              progress=timing.ProgressPrinter())
    except KitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    unstable = description["unstable_keys"]
    print(f"wrote {args.out} ({description['seconds']} s); unstable keys: {len(unstable)}"
          + (f" ({', '.join(unstable[:5])}{' ...' if len(unstable) > 5 else ''})" if unstable else ""))
    return 0
