"""Measure a profiling kit with ONNX Runtime on the device it runs on.

Needs only Python, numpy and onnxruntime: copy this folder (profilers/) and the kit to the device, run

    python profilers/ort_runner.py KIT_DIR --out results.csv [--threads 1] [--warmup 10] [--runs 50]

and bring results.csv and results.json back for `hwnas profile ingest results.csv --out TABLE`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

if __package__:
    from . import measure as timing
else:  # run as a script from a copied profilers/ folder
    import measure as timing  # type: ignore[no-redef]

KIT_FORMAT = "hwnas-profiling-kit"


class KitError(Exception):
    pass


def read_manifest(kit_dir: str | Path) -> dict:
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
    entries = manifest["entries"]
    models = [*entries, manifest.get("calibration"), *manifest.get("networks", [])] if isinstance(entries, list) else None
    if not models or not all(_is_model_entry(e) for e in models):
        raise KitError(f"{path}: the list of models is damaged (each needs a key, a file and an input shape); "
                       "make the kit again with `hwnas profile kit`")
    missing = [e["file"] for e in models if not (Path(kit_dir) / e["file"]).is_file()]
    if missing:
        raise KitError(f"{Path(kit_dir) / missing[0]} is missing ({len(missing)} model file(s) in all); copy the whole kit")
    for key in ("space", "fingerprint", "batch", "dtype", "opset", "hwnas_version", "space_definition"):
        if key not in manifest:
            raise KitError(f"{path} lacks `{key}`; make the kit again with `hwnas profile kit`")
    return manifest


def _is_model_entry(entry: object) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("file"), str)
            and isinstance(entry.get("input_shape"), list) and 0 < len(entry["input_shape"]) <= 6
            and all(isinstance(n, int) and 0 < n <= 4096 for n in entry["input_shape"]))


def open_session(path: str | Path, threads: int, provider: str = "CPUExecutionProvider"):
    """A session as a deployed model runs: `threads` intra-op threads, sequential, all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=[provider])


def ort_calls(kit_dir: str | Path, manifest: dict, threads: int,
              provider: str) -> tuple[dict[str, Callable[[], object]], dict[str, Callable[[], object]]]:
    """One zero-argument call per kit entry (and the calibration models), each running its own session,
    and for each a preparation that reads its input, so the input is in cache as the previous op's
    output is inside a network, while the weights are not."""
    rng = np.random.default_rng(0)
    calls, prepare = {}, {}
    for entry in [*manifest["entries"], manifest["calibration"], *manifest.get("networks", [])]:
        path = Path(kit_dir) / entry["file"]
        x = rng.standard_normal(entry["input_shape"]).astype(np.float32)
        try:
            calls[entry["key"]] = bound_call(open_session(path, threads, provider), x)
        except Exception as exc:  # onnxruntime's own errors (a damaged model, an input it does not take)
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise KitError(f"{path}: onnxruntime cannot run it ({first}); make the kit again") from None
        prepare[entry["key"]] = x.sum
    return calls, prepare


def bound_call(session, x: np.ndarray) -> Callable[[], object]:
    """A call that runs `session` on `x` into a preallocated output buffer: inside a network an op's output
    goes to the runtime's own memory, so allocating and copying a fresh result array is not timed."""
    y = session.run(None, {session.get_inputs()[0].name: x})[0]
    out = np.empty_like(y)
    binding = session.io_binding()
    binding.bind_cpu_input(session.get_inputs()[0].name, x)
    binding.bind_output(session.get_outputs()[0].name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
    # keep the buffers alive as long as the call
    return lambda session=session, binding=binding, x=x, out=out: session.run_with_iobinding(binding)


def run_kit(kit_dir: str | Path, out: str | Path, threads: int = 1, warmup: int = 10, runs: int = 100,
            max_cv: float = 0.25, provider: str = "CPUExecutionProvider",
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Measure every model of the kit; write `out` (CSV) and its description beside it (`.json`)."""
    import onnxruntime as ort

    manifest = read_manifest(kit_dir)
    if provider not in ort.get_available_providers():
        raise KitError(f"execution provider {provider} is not available here: {ort.get_available_providers()}")
    start = time.time()
    device = timing.describe_device()  # before measuring: the load average then is the device's own, not ours
    calls, prepare = ort_calls(kit_dir, manifest, threads, provider)
    networks = {n["key"] for n in manifest.get("networks", [])}
    results = timing.measure({k: c for k, c in calls.items() if k not in networks}, warmup=warmup, runs=runs,
                             max_cv=max_cv, progress=progress, prepare=prepare)
    results.update(timing.measure_alone({k: calls[k] for k in calls if k in networks}, warmup=warmup, runs=runs,
                                        max_cv=max_cv, prepare=prepare))
    out = Path(out)
    timing.write_results(out, results)
    description = {
        "kit": {k: manifest[k] for k in ("space", "fingerprint", "batch", "dtype", "opset", "hwnas_version")},
        "space_definition": manifest["space_definition"],
        "calibration_key": manifest["calibration"]["key"], "networks": manifest.get("networks", []),
        "device": device,
        "runtime": "onnxruntime", "runtime_version": ort.__version__, "provider": provider, "threads": threads,
        "warmup": warmup, "runs": runs, "max_cv": max_cv,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - start, 1),
        "unstable_keys": [key for key, stats in results.items() if not stats["stable"]],
    }
    out.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time every model of an hwnas profiling kit with ONNX Runtime.")
    parser.add_argument("kit", help="kit folder made by `hwnas profile kit`")
    parser.add_argument("--out", required=True, help="results CSV (its description goes beside it as .json)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per model first (default 10)")
    parser.add_argument("--runs", type=int, default=100,
                        help="timed runs per model, one per interleaved round (default 100)")
    parser.add_argument("--max-cv", type=float, default=0.25, help="re-measure keys noisier than this")
    parser.add_argument("--provider", default="CPUExecutionProvider", help="ONNX Runtime execution provider")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        print("ort_runner: error: need --threads >= 1, --runs >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if Path(args.out).exists():
        print(f"ort_runner: error: {args.out} exists; choose another --out or remove it", file=sys.stderr)
        return 2
    try:
        description = run_kit(args.kit, args.out, args.threads, args.warmup, args.runs, args.max_cv,
                              args.provider, progress=timing.ProgressPrinter())
    except KitError as exc:
        print(f"ort_runner: error: {exc}", file=sys.stderr)
        return 2
    unstable = description["unstable_keys"]
    print(f"wrote {args.out} ({description['seconds']} s); unstable keys: {len(unstable)}"
          + (f" ({', '.join(unstable[:5])}{' ...' if len(unstable) > 5 else ''})" if unstable else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
