"""Int8 for ONNX Runtime that keeps its accuracy: static QDQ quantization, with the standard remedies
tried from the cheapest until the int8 network is within the allowed accuracy drop.

The ladder (each remedy keeps what the ones before it changed):
1. `per-channel`: int8 weights per output channel, uint8 activations, min-max ranges from 256 real
   training images (ONNX Runtime's recommended CPU scheme).
2. `reduce-range`: 7-bit weights. On x86 CPUs without VNNI the u8 x s8 dot products are summed in
   int16 pairs, which saturate with full-range weights; one bit fewer cannot saturate.
3. `percentile`: activation ranges that clip the 0.01% outliers, from 1024 images; min-max lets one
   extreme activation stretch a tensor's scale and waste its 256 levels.
4. `qat`: quantization-aware fine-tuning (hwnas/qat.py), a few epochs of training with fake int8 in
   the scheme of 1, then 1 on the fine-tuned weights; the whole network stays int8.
5. `float-sensitive`: the layers whose quantization alone moves the logits most stay in float, the
   fewest (1, 2, 4, ...) that bring the drop within the limit.
Fine-tuning comes before float layers because a float layer costs the deployed network its speed on
every call, where fine-tuning costs the export a few minutes once.
The drop is judged on held-out training images (never the test images the report gives), so choosing
a remedy does not tune on the test set.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

log = logging.getLogger("hwnas")

SELECTION_IMAGES = 500  # held-out training images that judge each remedy
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")  # the layers whose sensitivity is measured


@dataclass(frozen=True)
class Remedy:
    name: str
    reduce_range: bool = False
    calibrate: str = "MinMax"
    calibration_images: int = 256
    keep_float: tuple[str, ...] = ()  # nodes left in float


LADDER = (
    Remedy("per-channel"),
    Remedy("reduce-range", reduce_range=True),
    Remedy("percentile", reduce_range=True, calibrate="Percentile", calibration_images=1024),
)


def quantize(prepared: Path, out: Path, calibration: np.ndarray, remedy: Remedy, cache: Path | None = None) -> None:
    """Static QDQ quantization of an ONNX Runtime-prepared model as `remedy` says; with `cache`, the
    activation ranges are read from it when it exists and written to it when not."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    model = onnx.load(str(prepared))
    name = model.graph.input[0].name
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch = dim.dim_value if dim.HasField("dim_value") else 16
    images = calibration[:remedy.calibration_images]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: images[i:i + batch]} for i in range(0, len(images) - len(images) % batch, batch)])

        def get_next(self):
            return next(self.batches, None)

    options = {"CalibPercentile": 99.99} if remedy.calibrate == "Percentile" else {}
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=remedy.reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, remedy.calibrate),
                    nodes_to_exclude=list(remedy.keep_float) or None, extra_options=options,
                    calibration_cache_path=str(cache) if cache else None)


def prepare(onnx_path: Path, out: Path) -> None:
    """ONNX Runtime's pre-processing before quantization (shape inference, graph optimisation)."""
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(onnx_path), str(out))


def layer_sensitivity(prepared: Path, calibration: np.ndarray, remedy: Remedy, outputs: Callable[[Path], np.ndarray],
                      reference: np.ndarray, workdir: Path) -> list[tuple[str, float]]:
    """Each quantizable layer with the mean squared change of the logits when it alone is quantized as
    `remedy` says, most sensitive first."""
    nodes = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type in QUANTIZED_OPS]
    path, cache = workdir / "one_layer.onnx", workdir / "ranges.json"
    quantize(prepared, path, calibration, remedy, cache)  # every tensor's range, calibrated once
    scores = []
    for node in nodes:
        others = tuple(n for n in nodes if n != node)
        quantize(prepared, path, calibration, replace(remedy, keep_float=others), cache)
        scores.append((node, float(np.mean((outputs(path) - reference) ** 2))))
    return sorted(scores, key=lambda item: -item[1])


def int8_with_remedies(onnx_path: Path, out: Path, calibration: np.ndarray, selection: tuple[np.ndarray, np.ndarray],
                       run: Callable[[Path, np.ndarray], np.ndarray], max_drop: float,
                       fine_tune: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Quantize `onnx_path` into `out` with the cheapest remedy whose accuracy on `selection` lies within
    `max_drop` (a fraction) of the float network's; the one that lost least when none does. Returns what each
    remedy gave and which was kept. `run(path, x)` gives a model file's logits; `fine_tune(path)`, when
    given, writes the network fine-tuned for int8 as a float ONNX file and returns its figures."""
    x, y = selection
    accuracy = lambda logits: float((logits.argmax(axis=1) == y).mean())  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = work / "prepared.onnx"
        prepare(onnx_path, prepared)
        reference = run(onnx_path, x)
        float_acc = accuracy(reference)
        tried: list[dict[str, Any]] = []

        def attempt(name: str, make: Callable[[Path], dict[str, Any]]) -> bool:
            started = time.perf_counter()
            path = work / f"{len(tried)}.onnx"
            row = make(path)
            acc = accuracy(run(path, x))
            tried.append({"remedy": name, **row, "selection_acc": acc, "selection_drop": float_acc - acc,
                          "seconds": round(time.perf_counter() - started, 1), "file": path})
            return float_acc - acc <= max_drop

        def post_training(remedy: Remedy) -> Callable[..., dict[str, Any]]:
            def make(path: Path, source: Path = prepared) -> dict[str, Any]:
                quantize(source, path, calibration, remedy)
                return {"reduce_range": remedy.reduce_range, "calibrate": remedy.calibrate,
                        "calibration_images": min(remedy.calibration_images, len(calibration)),
                        "float_layers": list(remedy.keep_float)}
            return make

        met = any(attempt(remedy.name, post_training(remedy)) for remedy in LADDER)
        if not met and fine_tune is not None:
            def fine_tuned(path: Path) -> dict[str, Any]:
                tuned, tuned_prepared = work / "fine_tuned.onnx", work / "fine_tuned_prepared.onnx"
                row = fine_tune(tuned)
                prepare(tuned, tuned_prepared)
                return {**row, **post_training(LADDER[0])(path, tuned_prepared)}

            met = attempt("qat", fine_tuned)
        if not met:
            base = LADDER[-1]
            ranked = layer_sensitivity(prepared, calibration, base, lambda p: run(p, x), reference, work)
            count = 1
            while not met and count <= len(ranked):
                kept = tuple(node for node, _ in ranked[:count])
                met = attempt("float-sensitive", post_training(replace(base, keep_float=kept)))
                count *= 2
        chosen = next((t for t in tried if t["selection_drop"] <= max_drop), None) or min(
            tried, key=lambda t: t["selection_drop"])
        chosen["file"].replace(out)
        for t in tried:
            del t["file"]
    return {"remedy": chosen["remedy"], "met_on_selection": met, "max_accuracy_drop": max_drop,
            "selection_images": len(y), "selection_float_acc": float_acc, "tried": tried}
