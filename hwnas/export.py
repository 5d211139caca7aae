"""Export a final network to ONNX for deployment, and prove the file is right.

The eval-mode graph (no auxiliary head, no drop-path, BN folded) is exported with a fixed or dynamic
batch axis, passes `onnx.checker`, and must give ONNX Runtime outputs within 1e-4 of PyTorch's on random
and on real images, or the export fails and leaves nothing behind. The 1e-4 is absolute for outputs up
to magnitude 1 and relative to the largest output beyond that: a trained classifier's logits reach tens,
where fp32 PyTorch itself differs from an fp64 evaluation by more than 1e-4 absolute.
Its latency is measured as the profiler measures a table (same session settings, interleaved timed
runs, the table's statistic) and printed beside the table's prediction. Optionally: ONNX Runtime's
mobile format (`.ort`) after its mobile usability check, and static int8 quantization calibrated on
real training images, with the accuracy drop and speed-up measured.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from hwnas.config import DataConfig, ModelConfig, TrainConfig, build_config, read_yaml
from hwnas.errors import CheckpointError, DataError, HwnasError
from hwnas.kinds import arch_from_dict, build_model, kind_of, load_arch
from hwnas.models import count_macs, count_parameters
from hwnas.runtimes import DEFAULT_RUNTIME, export_formats, get_runtime
from hwnas.runtimes.base import python_output_silenced
from hwnas.runtimes.onnx import OPSET, export_onnx
from hwnas.train import arch_text, build_from_weights, load_weights
from hwnas.runtimes.parity import outputs_in_batches, parity, with_outputs_of_order_one

log = logging.getLogger("hwnas.export")

REAL_IMAGES = 64  # real test images for the parity check
CALIBRATION_IMAGES = 1024  # real training images for int8 calibration, at most (the remedies use 256 or all)
EVAL_IMAGES = 2000  # test images for the int8 accuracy comparison (all when fewer)
# classes, channels, side of each dataset's images as the training recipes use them
DATASET_SHAPES = {"cifar10": (10, 3, 32), "imagenet": (1000, 3, 224), "digits": (10, 1, 32),
                  "fashion-mnist": (10, 1, 32)}
DEFAULT_RECIPES = {"cifar10": "cifar10", "imagenet": "imagenet_mobile", "digits": "digits",
                   "fashion-mnist": "fashion-mnist"}


class ExportError(HwnasError):
    pass


FORMATS = export_formats()  # export format -> the runtime that runs it
# every export writes the default runtime's file: the graph the checker reads and int8 quantizes
BASE = get_runtime(DEFAULT_RUNTIME)
BASE_FORMAT = BASE.suffix.lstrip(".")


def format_runtime(fmt: str):
    if fmt not in FORMATS:
        raise HwnasError(f"--format {fmt}: hwnas exports {', '.join(FORMATS)}")
    return get_runtime(FORMATS[fmt])


def _recipe_model(dataset: str) -> ModelConfig:
    path = f"configs/train/{DEFAULT_RECIPES[dataset]}.yaml"
    return build_config(TrainConfig, read_yaml(path), path).model


def resolve_network(arch: str | None, weights: str | None, dataset: str | None) -> dict[str, Any]:
    """The network to export: from a weights file (checked against `arch` and `dataset` when given), or an
    untrained one as the dataset's default recipe builds it."""
    if weights:
        state = load_weights(weights)
        trained = arch_from_dict(state["arch"])
        if arch is not None and load_arch(arch) != trained:
            raise CheckpointError(f"{weights} holds weights of another architecture, not {arch}; "
                                  "leave --arch out to export the one it was trained for")
        if dataset is not None and dataset != state["dataset"]:
            raise CheckpointError(f"{weights} was trained on {state['dataset']}, not {dataset}")
        return {"arch": trained, "model": build_from_weights(state, str(weights)), "dataset": state["dataset"],
                "model_cfg": ModelConfig.model_validate(state["model"]), "channels": state["in_channels"],
                "size": state["image_size"], "trained": True}
    if arch is None or dataset is None:
        raise HwnasError("export: give --arch and --dataset (and --weights for a trained network)")
    architecture = load_arch(arch)
    classes, channels, size = DATASET_SHAPES[dataset]
    channels, size = kind_of(architecture).input_shape(architecture) or (channels, size)
    torch.manual_seed(0)
    model_cfg = _recipe_model(dataset)
    model = with_outputs_of_order_one(build_model(architecture, model_cfg, classes, channels).eval(),
                                      (1, channels, size, size))
    return {"arch": architecture, "model": model,
            "dataset": dataset, "model_cfg": model_cfg, "channels": channels, "size": size, "trained": False}


def real_images(dataset: str, channels: int, size: int, split: str, count: int,
                data_root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images (and labels) of a split, preprocessed as in evaluation; DataError if absent."""
    from hwnas.data import iterate_once, load_dataset

    gray = DATASET_SHAPES[dataset][1] == 1
    data = load_dataset(DataConfig(dataset=dataset, root=data_root, image_size=size,
                                   channels=3 if gray and channels == 3 else None))
    source = data.test if split == "test" else data.train
    indices = torch.arange(min(count, len(source)))
    x, y = zip(*iterate_once(source, indices, 256))
    return torch.cat(x).numpy(), torch.cat(y).numpy()


def _writable(out: Path) -> None:
    if out.exists():
        raise HwnasError(f"{out} already exists; choose another --out or remove it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        raise HwnasError(f"cannot write {out}: {exc.strerror or exc}") from None


def measure_latency(runtime, paths: dict[str, Path], shape: tuple[int, ...], threads: int, warmup: int, runs: int,
                    estimator: str = "p10_ms") -> dict[str, dict[str, float]]:
    """End-to-end latency of each of `runtime`'s files, measured as the kit runners measure a table's
    calibration networks (bursts of consecutive calls, profilers/measure.py)."""
    from profilers import measure as timing

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    calls = {name: runtime.load(path, threads).bound(x) for name, path in paths.items()}
    results = timing.measure_networks(calls, warmup=warmup, runs=runs, prepare={name: x.sum for name in paths})
    return {name: {"measured_ms": r[estimator], "median_ms": r["median_ms"], "cv": r["cv"], "stable": r["stable"]}
            for name, r in results.items()}


def timed_again(runtime, path: str | Path, latency: dict[str, Any], shape: Sequence[int]) -> dict[str, Any]:
    """A report's `latency` of `path` with the file timed once more with the same settings, keeping the
    quicker of the two: a slow stretch of a shared host only ever slows a measurement down."""
    again = measure_latency(runtime, {"file": Path(path)}, tuple(shape), latency["threads"], latency["warmup"],
                            latency["runs"], latency["estimator"])["file"]
    kept = {**latency, **(again if again["measured_ms"] < latency["measured_ms"] else {})}
    kept["timings_ms"] = [latency["measured_ms"], again["measured_ms"]]
    if "predicted_ms" in kept:
        kept["error_pct"] = 100 * (kept["predicted_ms"] / kept["measured_ms"] - 1)
    return kept


def timing_settings(prediction: dict[str, Any] | None, threads: int, runs: int) -> dict[str, Any]:
    """Measured as the table was made (its threads and statistic), else as `hwnas profile` defaults; at
    least `runs` timed runs: one network has no neighbours to interleave with, so a longer window is what
    lets the 10th percentile find the machine's quiet moments."""
    if prediction:
        return {"threads": prediction["threads"], "warmup": prediction["warmup"],
                "runs": max(runs, prediction["runs"]), "estimator": prediction["estimator"]}
    return {"threads": threads, "warmup": 10, "runs": runs, "estimator": "p10_ms"}


def with_prediction(latency: dict[str, Any], prediction: dict[str, Any] | None) -> dict[str, Any]:
    if prediction:
        latency.update(predicted_ms=prediction["predicted_ms"], table=prediction["table"],
                       breakdown_ms=prediction["breakdown_ms"], table_same_host=prediction["same_host"],
                       table_differs=prediction["differs"],
                       error_pct=100 * (prediction["predicted_ms"] / latency["measured_ms"] - 1))
    return latency


def table_prediction(table_path: str, arch, model_cfg: ModelConfig, size: int) -> dict[str, Any]:
    """The table's prediction for this network; an error when the table describes another network."""
    from hwnas.latency.check import same_host
    from hwnas.latency.table import load_table, table_runtime
    from hwnas.latency.validate import predict

    table = load_table(table_path)
    space = kind_of(arch).table_space(arch, table, model_cfg, size)
    same, differs = same_host(table)
    return {**predict(table, space, arch), "runtime": table_runtime(table).name, "dtype": table.dtype,
            "same_host": same, "differs": differs,
            "threads": int(table.meta["threads"]),
            "warmup": int(table.meta.get("warmup", 10)), "runs": int(table.meta.get("runs", 100))}


def export_files(out: Path, formats: Sequence[str] = (), quantize: str | None = None) -> dict[str, Path]:
    """Every file an export to `out` writes: the base runtime's file, the int8 one, and one per format."""
    files = {BASE_FORMAT: out, **({"int8": out.with_suffix(".int8" + BASE.suffix)} if quantize else {})}
    for fmt in formats:
        if fmt != BASE_FORMAT:
            runtime = format_runtime(fmt)
            files[fmt] = out.with_suffix(runtime.variants.get(fmt, runtime.suffix))
            if quantize and quantize in runtime.deploy_precisions and runtime is not BASE:
                files[f"{fmt}:{quantize}"] = out.with_suffix(f".{quantize}{runtime.suffix}")
    return files


def export(arch: str | None, out: str | Path, weights: str | None = None, dataset: str | None = None,
           table: str | None = None, quantize: str | None = None,
           dynamic_batch: bool = False, batch: int = 1, threads: int = 1, runs: int = 300,
           data_root: str | None = None, formats: Sequence[str] = (), max_accuracy_drop: float = 0.01,
           qat_epochs: int = 2) -> dict[str, Any]:
    """Export, check and measure; returns the report. On any failure the files it made are removed.
    The base runtime's file (`.onnx`) is always written; `formats` adds other files beside it (`ort`, `pte`,
    `tflite`). With `quantize`, the int8 file is the cheapest remedy within `max_accuracy_drop` (a fraction);
    `qat_epochs` of quantization-aware fine-tuning is one of them (0: not tried)."""
    out = Path(out)
    if out.suffix != BASE.suffix:
        raise HwnasError(f"--out {out}: expected a file name ending in {BASE.suffix}")
    if batch < 1 or threads < 1 or runs < 1:
        raise HwnasError(f"--batch, --threads and --runs must be at least 1 (got {batch}, {threads}, {runs})")
    if qat_epochs < 0:
        raise HwnasError(f"--qat-epochs must be 0 (no fine-tuning) or more (got {qat_epochs})")
    if not 0.0 <= max_accuracy_drop < 1.0:
        raise HwnasError(f"--max-accuracy-drop must lie in [0, 100) points (got {100 * max_accuracy_drop:g})")
    if quantize and quantize not in BASE.deploy_precisions:
        raise HwnasError(f"--quantize {quantize}: the export deploys {', '.join(BASE.deploy_precisions)}")
    files = export_files(out, dict.fromkeys(formats), quantize)
    others = {fmt: format_runtime(fmt) for fmt in files if fmt in FORMATS and fmt != BASE_FORMAT}
    fixed_batch = [fmt for fmt, runtime in others.items() if runtime is not BASE]
    if dynamic_batch and fixed_batch:
        raise HwnasError(f"--dynamic-batch: {', '.join(fixed_batch)} files take a fixed batch; leave them out")
    for runtime in others.values():
        runtime.version()  # refused before anything is built when a runtime is not installed
    net = resolve_network(arch, weights, dataset)
    prediction = table_prediction(table, net["arch"], net["model_cfg"], net["size"]) if table else None
    if prediction and prediction["runtime"] not in (BASE.name, *(r.name for r in others.values())):
        wanted = [fmt for fmt, r in FORMATS.items() if r == prediction["runtime"]]
        raise HwnasError(f"--table {table} was measured with {prediction['runtime']}, so it predicts "
                         + (f"its .{wanted[0]} files: add --format {wanted[0]}" if wanted else
                            "no exported file; give a table of the runtime you export to"))
    if prediction and prediction["dtype"] == "int8" and not quantize:
        raise HwnasError(f"--table {table} holds int8 latencies, which predict an int8 file: add --quantize int8")
    for path in files.values():
        _writable(path)
    try:
        return _export(net, (batch, net["channels"], net["size"], net["size"]), files, others, prediction,
                       dynamic_batch, threads, runs, data_root, max_accuracy_drop, qat_epochs)
    except BaseException:
        for path in files.values():  # nothing half-made is left behind
            path.unlink(missing_ok=True)
        raise


def _export(net: dict[str, Any], shape: tuple[int, int, int, int], files: dict[str, Path],
            others: dict[str, Any], prediction: dict[str, Any] | None, dynamic_batch: bool, threads: int, runs: int,
            data_root: str | None, max_accuracy_drop: float, qat_epochs: int) -> dict[str, Any]:
    model, architecture, out = net["model"].eval(), net["arch"], files[BASE_FORMAT]
    batch = shape[0]
    export_onnx(model, shape, out, dynamic_batch=dynamic_batch)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    fixed = None if dynamic_batch else batch
    random_x = np.random.default_rng(1).standard_normal((max(batch, 4) // batch * batch, *shape[1:])).astype(np.float32)
    try:
        images, _ = real_images(net["dataset"], shape[1], shape[2], "test", REAL_IMAGES, data_root)
        skipped = None
    except DataError as exc:
        images, skipped = None, f"skipped: {exc}"
        log.warning("parity on real images skipped: %s", exc)
    checks = file_parity(BASE, out, model, random_x, images, fixed, threads)
    if skipped:
        checks["real"] = skipped

    report: dict[str, Any] = {
        "command": "export", "onnx": str(out), "arch": architecture.to_dict(), "arch_text": arch_text(architecture),
        "dataset": net["dataset"], "trained": net["trained"], "input_shape": list(shape),
        "dynamic_batch": dynamic_batch, "opset": OPSET, "checker": "passed", "parity": checks,
        "params": count_parameters(model), "macs": count_macs(model, shape[1:]),
    }
    timed = {"fp32": out}
    if "int8" in files:
        if images is None:
            raise ExportError(f"--quantize int8 calibrates on real images, and {net['dataset']} is not available "
                              f"({checks['real']})")
        from hwnas.quantize import SELECTION_IMAGES

        # loaded once for every int8 file: ONNX Runtime's remedies and the other runtimes' calibration
        int8_images = {split: real_images(net["dataset"], shape[1], shape[2], split, count, data_root)
                       for split, count in (("train", CALIBRATION_IMAGES + SELECTION_IMAGES), ("test", EVAL_IMAGES))}
        calibration, selection = held_out(int8_images["train"], shape[0])
        tuned = fine_tune = None  # fine-tuned at most once, for every runtime whose post-training int8 loses too much
        if qat_epochs:
            from hwnas.qat import fine_tuned

            tuned = functools.cache(lambda: fine_tuned(net, shape, qat_epochs, data_root))
            fine_tune = lambda path: fine_tuned_file(tuned, shape, path, dynamic_batch)  # noqa: E731
        report["int8"] = int8_accuracy(out, files["int8"], calibration, selection, int8_images["test"], shape, fixed,
                                       threads, max_accuracy_drop, fine_tune)
        timed["int8"] = files["int8"]
    own = prediction if prediction and prediction["runtime"] == BASE.name else None
    settings = timing_settings(own, threads, runs)
    measured = measure_latency(BASE, timed, shape, **settings)
    # a table predicts the file of its precision
    at = {precision: own if own and own["dtype"] == precision else None for precision in ("float32", "int8")}
    report["latency"] = with_prediction({**settings, "batch": batch, **measured["fp32"]}, at["float32"])
    if others:
        # the other runtimes that deploy int8 get an int8 file too, calibrated on the same real images
        int8_data = None
        if "int8" in files and any("int8" in r.deploy_precisions for r in others.values() if r is not BASE):
            int8_data = {"calibration": calibration[:256], "selection": selection, "test": int8_images["test"],
                         "max_drop": max_accuracy_drop, "fine_tuned": tuned}
        report["runtimes"] = {fmt: other_format(fmt, runtime, files, model, shape, random_x, images, fixed, prediction,
                                                threads, runs, int8_data) for fmt, runtime in others.items()}
    if "int8" in files:
        report["int8"].update(measured_ms=measured["int8"]["measured_ms"],
                              speedup=measured["fp32"]["measured_ms"] / measured["int8"]["measured_ms"],
                              latency=with_prediction({**settings, "batch": batch, **measured["int8"]}, at["int8"]))
    return report


def file_parity(runtime, path: Path, model: nn.Module, random_x: np.ndarray, images: np.ndarray | None,
                batch: int | None, threads: int) -> dict[str, Any]:
    """`runtime`'s file against PyTorch on random and (when there are) real images."""
    run = runtime.load(path, threads).run
    what = runtime.title + (f" ({path.suffix})" if path.suffix != runtime.suffix else "")
    checks = {"random": parity(run, model, random_x, batch, f"{what} on random inputs", runtime.tolerance)}
    if images is not None:
        checks["real"] = parity(run, model, images, batch, f"{what} on real inputs", runtime.tolerance)
    return checks


def other_format(fmt: str, runtime, files: dict[str, Path], model: nn.Module, shape: tuple[int, ...],
                 random_x: np.ndarray, images: np.ndarray | None, batch: int | None,
                 prediction: dict[str, Any] | None, threads: int, runs: int,
                 int8_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Another file: written (from the module, or converted from the base file when it is a form of it),
    checked against PyTorch as the base file is, and timed in its runtime (beside the table's prediction
    when the table is that runtime's). With `int8_data`, a runtime that deploys int8 also gets its int8
    file, calibrated on real training images, with both files' test accuracy."""
    path = files[fmt]
    found = runtime.save_variant(fmt, files[BASE_FORMAT], path) if fmt in runtime.variants else {}
    if fmt not in runtime.variants:
        runtime.save(model, shape, path)
    checks = file_parity(runtime, path, model, random_x, images, batch, threads)
    own = prediction if prediction and prediction["runtime"] == runtime.name and prediction["dtype"] == "float32" \
        else None
    settings = timing_settings(own, threads, runs)
    row = {"path": str(path), "runtime": runtime.name, "runtime_version": runtime.version(),
           **runtime.describe(settings["threads"]), **found, "parity": checks}
    timed = {"fp32": path}
    if int8_data is not None and "int8" in runtime.deploy_precisions and fmt not in runtime.variants:
        timed["int8"] = files[f"{fmt}:int8"]
        row["int8"] = runtime_int8(runtime, model, shape, path, timed["int8"], int8_data, threads)
    measured = measure_latency(runtime, timed, shape, **settings)  # both files in the same rounds
    if "int8" in timed:
        int8_own = prediction if prediction and prediction["runtime"] == runtime.name and \
            prediction["dtype"] == "int8" else None
        row["int8"].update(measured_ms=measured["int8"]["measured_ms"],
                           speedup=measured["fp32"]["measured_ms"] / measured["int8"]["measured_ms"],
                           latency=with_prediction({**settings, "batch": shape[0], **measured["int8"]}, int8_own))
    return {**row, "latency": with_prediction({**settings, "batch": shape[0], **measured["fp32"]}, own)}


def runtime_int8(runtime, model: nn.Module, shape: tuple[int, ...], fp32: Path, int8: Path,
                 int8_data: dict[str, Any], threads: int) -> dict[str, Any]:
    """`runtime`'s own int8 file of `model` in its one scheme, calibrated on real training images. When that
    loses more than the allowed drop on held-out training images, the network fine-tuned for int8
    (hwnas/qat.py) in the same scheme is kept if it loses less. Both files' test accuracy in that runtime."""
    def accuracy(path: Path, images: tuple[np.ndarray, np.ndarray]) -> float:
        x, y = images
        usable = len(x) - len(x) % shape[0]
        logits = outputs_in_batches(runtime.load(path, threads).run, x[:usable], shape[0])
        return float((logits.argmax(axis=1) == y[:usable]).mean())

    calibration, selection, max_drop = int8_data["calibration"], int8_data["selection"], int8_data["max_drop"]
    float_acc = accuracy(fp32, selection)
    runtime.save_quantized(model, shape, int8, calibration)
    tried = [{"remedy": "post-training", "selection_drop": float_acc - accuracy(int8, selection)}]
    if tried[0]["selection_drop"] > max_drop and int8_data["fine_tuned"]:
        network, figures = int8_data["fine_tuned"]()
        with tempfile.TemporaryDirectory() as tmp:
            candidate = Path(tmp) / int8.name
            runtime.save_quantized(network, shape, candidate, calibration)
            tried.append({"remedy": "qat", **figures, "selection_drop": float_acc - accuracy(candidate, selection)})
            if tried[1]["selection_drop"] < tried[0]["selection_drop"]:
                shutil.move(candidate, int8)
    kept = min(tried, key=lambda t: t["selection_drop"])
    usable = len(int8_data["test"][0]) - len(int8_data["test"][0]) % shape[0]
    test = {name: accuracy(path, int8_data["test"]) for name, path in (("fp32", fp32), ("int8", int8))}
    drop = test["fp32"] - test["int8"]
    return {"path": str(int8), "scheme": runtime.int8_scheme, "remedy": kept["remedy"], "tried": tried,
            "selection_images": len(selection[1]), "test_images": usable, "fp32_acc": test["fp32"],
            "int8_acc": test["int8"], "accuracy_drop": drop, "max_accuracy_drop": max_drop,
            "within_drop": drop <= max_drop, "calibration_images": len(calibration)}


def held_out(train: tuple[np.ndarray, np.ndarray], batch: int
             ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Real training images split into calibration images and the held-out images (a whole number of
    batches, at most a third) that judge each int8 remedy, so that choosing one never looks at the test set."""
    from hwnas.quantize import SELECTION_IMAGES

    x, y = train
    count = min(SELECTION_IMAGES, len(x) // 3)
    count -= count % batch
    return x[:len(x) - count], (x[len(x) - count:], y[len(x) - count:])


def fine_tuned_file(tuned: Callable[[], tuple[nn.Module, dict[str, Any]]], shape: tuple[int, ...], path: Path,
                    dynamic_batch: bool) -> dict[str, Any]:
    """The network fine-tuned for int8 as an ONNX file for ONNX Runtime's quantizer; its figures."""
    network, figures = tuned()
    export_onnx(network, shape, path, dynamic_batch=dynamic_batch)
    return figures


def int8_accuracy(fp32: Path, int8: Path, calibration: np.ndarray, selection: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...], fixed: int | None, threads: int,
                  max_drop: float, fine_tune: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Quantize `fp32` into `int8` with the cheapest remedy within `max_drop` on the held-out `selection`
    (hwnas/quantize.py; `fine_tune` its quantization-aware rung); test accuracy of both files with ONNX
    Runtime."""
    from hwnas.quantize import int8_with_remedies

    def run(path: Path, x: np.ndarray) -> np.ndarray:
        return outputs_in_batches(BASE.load(path, threads).run, x, fixed)

    with python_output_silenced():
        remedies = int8_with_remedies(fp32, int8, calibration, selection, run, max_drop, fine_tune)
    test_x, test_y = test
    usable = len(test_x) - len(test_x) % shape[0]
    accuracy = {name: float((run(path, test_x[:usable]).argmax(axis=1) == test_y[:usable]).mean())
                for name, path in (("fp32", fp32), ("int8", int8))}
    return {"path": str(int8), "test_images": usable, "fp32_acc": accuracy["fp32"], "int8_acc": accuracy["int8"],
            "accuracy_drop": accuracy["fp32"] - accuracy["int8"], **remedies}
