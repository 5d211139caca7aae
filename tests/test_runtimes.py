"""The runtimes behind one interface: each one's file computes what PyTorch computes, its kit runs on a
device with only its own package, and its results become a table of that runtime.

ExecuTorch and LiteRT come with extras (`pip install -e '.[executorch]'`, `'.[litert]'`) that cannot share
one environment; CI runs this file once in each (HWNAS_REQUIRE_RUNTIME names the one that must be there)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hwnas.cli import main
from hwnas.errors import HwnasError
from hwnas.latency.keys import routing_space_keys
from hwnas.latency.networks import build_network, input_shape, sample_arch
from hwnas.latency.table import load_table
from hwnas.runtimes import RUNTIMES, get_runtime
from hwnas.runtimes.parity import ParityError, parity, with_outputs_of_order_one
from latency_helpers import load_tiny_space

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"executorch": ("executorch.runtime", "litert_torch"), "litert": ("ai_edge_litert.interpreter", "litert_torch")}
EXTRA_RUNTIMES = ["executorch", "litert"]
# what each runner's device needs besides numpy: the modules made unimportable when it runs
BLOCKED = {"ort": ("torch", "hwnas", "pandas", "scipy"), "executorch": ("hwnas", "pandas", "scipy"),
           "litert": ("torch", "hwnas", "pandas", "scipy")}


def installed(name: str) -> bool:
    try:
        importlib.import_module({"ort": "onnxruntime", **{k: v[0] for k, v in PACKAGES.items()}}[name])
        return True
    except ImportError:
        return False


def require(name: str) -> None:
    """Skip (one line) when the runtime's extra is missing, unless this environment must have it."""
    if installed(name):
        return
    if os.environ.get("HWNAS_REQUIRE_RUNTIME") == name:
        pytest.fail(f"HWNAS_REQUIRE_RUNTIME={name} but {name} is not installed")
    pytest.skip(f"needs the {name} extra: pip install -e '.[{name}]'")


@pytest.fixture
def tiny(tmp_path):
    return load_tiny_space(tmp_path)


def tiny_network(space, seed=0):
    import random

    torch.manual_seed(seed)
    model = build_network(space, sample_arch(space, random.Random(seed)))
    return with_outputs_of_order_one(model.eval(), input_shape(space, 1), seed)


def test_every_runtime_is_found_by_its_own_and_its_tables_name():
    for runtime in RUNTIMES.values():
        assert get_runtime(runtime.name) is runtime and get_runtime(runtime.table_name) is runtime
    assert get_runtime("onnxruntime").name == "ort"
    with pytest.raises(HwnasError, match="unknown runtime 'tensorrt'"):
        get_runtime("tensorrt")


def test_outputs_of_order_one_make_a_wrong_kernel_show(tiny):
    model = tiny_network(tiny)
    x = np.random.default_rng(0).standard_normal((8, *input_shape(tiny, 1)[1:])).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    assert 0.3 < y.std() < 3 and np.abs(y).max() > 0.5  # an untrained network's logits are about 1e-2
    assert parity(lambda a: model(torch.from_numpy(a)).detach().numpy(), model, x, 1, "itself")["max_abs_diff"] < 1e-5
    with pytest.raises(ParityError, match="off disagrees with PyTorch"):
        parity(lambda a: model(torch.from_numpy(a)).detach().numpy() * 1.001, model, x, 1, "off")


@pytest.mark.parametrize("name", ["ort", *EXTRA_RUNTIMES])
def test_a_runtimes_file_computes_what_pytorch_computes(name, tiny, tmp_path):
    require(name)
    runtime = get_runtime(name)
    model = tiny_network(tiny)
    path = tmp_path / f"net{runtime.suffix}"
    runtime.save(model, input_shape(tiny, 1), path)
    x = np.random.default_rng(1).standard_normal((4, *input_shape(tiny, 1)[1:])).astype(np.float32)
    check = parity(runtime.load(path, 1).run, model, x, 1, name)
    assert check["max_abs_diff"] <= check["tolerance"] and check["max_abs_output"] > 0.5
    assert check["top1_agreement"] == 1.0


def _run_device(runner: str, blocked: tuple[str, ...], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a copied runner as a device would, with `blocked` modules made unimportable (packages of those
    names that raise ImportError shadow the installed ones)."""
    shadow = cwd / "blocked"
    for name in (*blocked, "profilers"):
        (shadow / name).mkdir(parents=True, exist_ok=True)
        (shadow / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this device')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    return subprocess.run([sys.executable, f"profilers/{runner}", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("name", EXTRA_RUNTIMES)
def test_a_kit_runs_with_only_its_runtime_and_becomes_its_runtimes_table(name, tiny, tmp_path):
    require(name)
    from hwnas.latency.kit import build_kit
    from profilers.runner import RUNNER_OF

    runtime = get_runtime(name)
    manifest = build_kit(tiny, tmp_path / "kit", 1, name)
    assert manifest["runtime"] == name and manifest["entries"][0]["file"].endswith(runtime.suffix)
    device = tmp_path / "device"
    shutil.copytree(ROOT / "profilers", device / "profilers")
    shutil.copytree(tmp_path / "kit", device / "kit")
    proc = _run_device(RUNNER_OF[name], BLOCKED[name], ["kit", "--out", "results.csv", "--warmup", "2", "--runs", "10"],
                       device)
    assert proc.returncode == 0, proc.stderr[-2000:]
    description = json.loads((device / "results.json").read_text())
    assert description["runtime"] == name and description["threads"] == 1 and description["runtime_version"]
    assert main(["profile", "ingest", str(device / "results.csv"), "--out", str(tmp_path / "t.csv")]) == 0
    table = load_table(tmp_path / "t.csv")
    assert table.meta["runtime"] == name and set(table.rows.index) == {k.name for k in routing_space_keys(tiny)}
    assert 0 < table.overhead_ms < min(table.rows.p10_ms) and len(table.meta["calibration_networks"]) == 16
    # the ONNX Runtime runner refuses this kit by what it is for, before opening a model
    proc = _run_device("ort_runner.py", BLOCKED["ort"], ["kit", "--out", "other.csv"], device)
    assert proc.returncode == 2 and f"a kit for {name}, not onnxruntime" in proc.stderr


@pytest.mark.parametrize("name", EXTRA_RUNTIMES)
def test_a_runner_refuses_another_runtimes_kit_in_one_line(name, tiny, tmp_path):
    from hwnas.latency.kit import build_kit
    from profilers.runner import RUNNER_OF

    build_kit(tiny, tmp_path / "kit")  # an ONNX Runtime kit
    proc = subprocess.run([sys.executable, str(ROOT / "profilers" / RUNNER_OF[name]), str(tmp_path / "kit"), "--out",
                           str(tmp_path / "r.csv")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and not (tmp_path / "r.csv").exists()
    assert f"is a kit for onnxruntime, not {name}" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", EXTRA_RUNTIMES)
def test_a_missing_runtime_is_one_line_naming_its_extra(name, tiny, tmp_path, monkeypatch, capsys):
    from profilers.runner import KitError

    def missing():
        raise KitError("not installed")

    monkeypatch.setattr(get_runtime(name).device, "version", missing)
    code = main(["profile", "--runtime", name, "--space", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "t.csv")])
    err = capsys.readouterr().err
    assert code == 2 and f"pip install -e '.[{name}]'" in err and len(err.strip().splitlines()) == 1
    assert main(["profile", "kit", "--runtime", name, "--space", str(tmp_path / "tiny.yaml"),
                 "--out", str(tmp_path / "kit")]) == 2
    assert not (tmp_path / "kit").exists() and not (tmp_path / "t.csv").exists()


def _small_routed(tmp_path: Path) -> str:
    from hwnas.archs.routed import RoutedArch, RoutedBlock

    arch = RoutedArch("densenas_32", tuple(RoutedBlock(b, "mbconv_k3_t3") for b in (1, 4, 7, 10, 13, 16)))
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch.to_dict()))
    return str(path)


@pytest.mark.parametrize("name,fmt", [("executorch", "pte"), ("litert", "tflite")])
def test_export_writes_checks_and_times_another_runtimes_file(name, fmt, tmp_path):
    require(name)
    from hwnas.export import export

    report = export(_small_routed(tmp_path), tmp_path / "m.onnx", dataset="digits", formats=[fmt], runs=5)
    other = report["runtimes"][fmt]
    assert Path(other["path"]) == tmp_path / f"m.{fmt}" and (tmp_path / f"m.{fmt}").is_file()
    assert other["runtime"] == name and other["latency"]["measured_ms"] > 0
    for check in ("random", "real"):
        assert other["parity"][check]["max_abs_diff"] <= other["parity"][check]["tolerance"]
        assert other["parity"][check]["top1_agreement"] == 1.0
    # the untrained network's outputs are of order one, for the ONNX file as for this one
    assert other["parity"]["random"]["max_abs_output"] > 0.5


@pytest.mark.parametrize("name", EXTRA_RUNTIMES)
def test_an_int8_file_holds_int8_weights_and_stays_close_to_pytorch(name, tiny, tmp_path):
    require(name)
    runtime = get_runtime(name)
    model, shape = tiny_network(tiny), input_shape(tiny, 1)
    int8 = tmp_path / f"int8{runtime.suffix}"
    runtime.save_at(model, shape, int8, "int8")
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = model(torch.from_numpy(x)).detach().numpy()
    out = runtime.load(int8, 1).run(x)
    assert out.dtype == np.float32 and out.shape == expected.shape  # LiteRT's int8 output comes back dequantized
    relative = np.abs(out - expected).max() / np.abs(expected).max()
    assert 1e-4 < relative < 0.15  # quantized, so not float-exact, and still the same function
    # int8 weights take a quarter of float32's bytes: a layer of 50k weights shows it through the graph's own bytes
    from hwnas.ops.mobile import MBConv

    layer = MBConv(64, 64, 3, 6, 1).eval()
    runtime.save_at(layer, (1, 64, 8, 8), tmp_path / f"layer{runtime.suffix}")
    runtime.save_at(layer, (1, 64, 8, 8), tmp_path / f"layer_int8{runtime.suffix}", "int8")
    assert (tmp_path / f"layer_int8{runtime.suffix}").stat().st_size < 0.4 * (tmp_path / f"layer{runtime.suffix}").stat().st_size


@pytest.mark.parametrize("name", EXTRA_RUNTIMES)
def test_a_classifiers_dropout_does_not_change_the_int8_file(name, tmp_path):
    """Eval-mode dropout before the classifier is no layer of the deployed network. Quantized as one, with
    ranges of its own, LiteRT's converter dropped it and the linear layer after it computed with ranges
    its input did not have: 0.36 of the largest logit off here, and 1.7 points of a trained
    Fashion-MNIST network's accuracy."""
    require(name)
    from torch import nn

    from hwnas.export import real_images

    runtime, shape = get_runtime(name), (1, 3, 32, 32)
    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10))
    model = with_outputs_of_order_one(head.eval(), shape)
    images, _ = real_images("digits", 3, 32, "train", 96, None)
    runtime.save_quantized(model, shape, tmp_path / f"m{runtime.suffix}", images[:64])
    assert isinstance(model[5], nn.Dropout)  # the caller's network is left as it was
    deployed = runtime.load(tmp_path / f"m{runtime.suffix}", 1)
    out = np.concatenate([deployed.run(image[None]) for image in images[64:]])
    expected = model(torch.from_numpy(images[64:])).detach().numpy()
    assert np.abs(out - expected).max() / np.abs(expected).max() < 0.15  # 0.06 in both runtimes


def test_a_table_of_another_runtime_is_refused_before_anything_is_written(tmp_path):
    from hwnas.export import export

    source = ROOT / "latency_tables/amd-epyc-2core-ort-1thread/densenas_32"
    shutil.copy(source.with_suffix(".csv"), tmp_path / "t.csv")
    meta = json.loads(source.with_suffix(".json").read_text())
    (tmp_path / "t.json").write_text(json.dumps({**meta, "runtime": "executorch"}))
    with pytest.raises(HwnasError, match="measured with executorch, so it predicts its .pte files: add --format pte"):
        export(_small_routed(tmp_path), tmp_path / "m.onnx", dataset="digits", table=str(tmp_path / "t.csv"))
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name", EXTRA_RUNTIMES)
def test_a_run_for_another_runtime_profiles_its_space_in_that_runtime(name, tiny, tmp_path):
    require(name)
    from hwnas.pipeline import choose_table

    ort_table = ROOT / "latency_tables/amd-epyc-2core-ort-1thread/densenas_32_small.csv"
    (tmp_path / "run").mkdir()
    chosen = choose_table(str(ort_table), tiny, tmp_path / "run", quiet=True, runtime_name=name)
    assert chosen["runtime"] == name and chosen["shipped_for_runtime"] is None
    assert chosen["decision"] == f"profiled here (runtime: no shipped tiny table measured with {name})"
    assert load_table(chosen["table"]).meta["runtime"] == name


def test_run_config_takes_only_a_runtime_with_files():
    from hwnas.config import ConfigError
    from hwnas.pipeline import load_run_config

    assert load_run_config(None, ["runtime=litert"]).runtime == "litert"
    with pytest.raises(ConfigError, match="runtime 'torch'"):
        load_run_config(None, ["runtime=torch"])


def benchmark_model_log(avg_us: float, threads: int = 1) -> str:
    """A log in the format LiteRT's benchmark_model prints (its tools/benchmark README): the warm-up run's
    summary, then the timed run's."""
    return f"""STARTING!
Log parameter values verbosely: [0]
Num threads: [{threads}]
Graph: [/data/local/tmp/hwnas-kit/model.tflite]
Use xnnpack: [1]
Loaded model /data/local/tmp/hwnas-kit/model.tflite
The input model file size (MB): 0.0123
Initialized session in 2.004ms.
Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=10 first={avg_us * 3:.0f} curr={avg_us:.0f} min={avg_us * 0.9:.0f} max={avg_us * 3:.0f} avg={avg_us * 1.2:.1f} std={avg_us * 0.5:.0f}

Running benchmark for at least 100 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=100 first={avg_us:.0f} curr={avg_us:.0f} min={avg_us * 0.95:.0f} max={avg_us * 1.1:.0f} avg={avg_us:.1f} std={avg_us * 0.02:.1f}

Inference timings in us: Init: 2004, First inference: {avg_us * 3:.0f}, Warmup (avg): {avg_us * 1.2:.1f}, Inference (avg): {avg_us:.1f}
Memory footprint delta from the start of the tool (MB): init=4.44531 overall=9.92969
"""


def test_benchmark_model_logs_from_a_phone_become_a_litert_table(tiny, tmp_path):
    """The adb path cannot run here: its parsing runs on logs in benchmark_model's documented format."""
    from hwnas.latency.kit import build_kit
    from profilers import litert_adb

    manifest = build_kit(tiny, tmp_path / "kit")  # its models stand in for .tflite files: only their names are read
    manifest["runtime"] = "litert"
    (tmp_path / "kit" / "manifest.json").write_text(json.dumps(manifest))
    logs = tmp_path / "logs"
    logs.mkdir()
    entries = [*manifest["entries"], manifest["calibration"], *manifest["networks"]]
    expected = {}
    for i, entry in enumerate(entries):
        avg_us = 5.0 if entry["key"] == "call_overhead" else 100.0 + 10 * i
        expected[entry["key"]] = avg_us / 1e3
        (logs / litert_adb._log_name(entry["key"])).write_text(benchmark_model_log(avg_us))
    out = tmp_path / "results.csv"
    assert litert_adb.main([str(tmp_path / "kit"), "--out", str(out), "--from-logs", str(logs)]) == 0
    assert main(["profile", "ingest", str(out), "--out", str(tmp_path / "t.csv"), "--name", "pixel"]) == 0
    table = load_table(tmp_path / "t.csv")
    assert table.meta["runtime"] == "litert" and table.estimator == "mean_ms" and table.meta["device_name"] == "pixel"
    first = manifest["entries"][0]["key"]
    assert table.rows.loc[first, "mean_ms"] == pytest.approx(expected[first])
    assert table.rows.loc[first, "std_ms"] == pytest.approx(0.02 * expected[first])
    assert table.overhead_ms == pytest.approx(0.005)
    # a log of another thread count, or none at all, is refused in one line and leaves no results
    (logs / litert_adb._log_name(first)).write_text(benchmark_model_log(100.0, threads=4))
    assert litert_adb.main([str(tmp_path / "kit"), "--out", str(tmp_path / "r2.csv"), "--from-logs", str(logs)]) == 2
    (logs / litert_adb._log_name(first)).write_text("Segmentation fault\n")
    assert litert_adb.main([str(tmp_path / "kit"), "--out", str(tmp_path / "r2.csv"), "--from-logs", str(logs)]) == 2
    assert not (tmp_path / "r2.csv").exists()


@pytest.mark.parametrize("name", EXTRA_RUNTIMES)
def test_a_runtimes_int8_tries_the_fine_tuned_network_when_post_training_loses_too_much(name, tmp_path):
    require(name)
    from hwnas.archs.routed import RoutedArch
    from hwnas.config import ModelConfig
    from hwnas.export import held_out, real_images, runtime_int8
    from hwnas.runtimes import get_runtime
    from hwnas.train import build_model

    runtime, shape = get_runtime(name), (1, 3, 32, 32)
    fp32, int8 = tmp_path / f"m{runtime.suffix}", tmp_path / f"m.int8{runtime.suffix}"
    arch = RoutedArch.from_dict(json.loads(Path(_small_routed(tmp_path)).read_text()))
    model = build_model(arch, ModelConfig(dropout=0.0), 10, 3).eval()
    runtime.save(model, shape, fp32)
    calibration, selection = held_out(real_images("digits", 3, 32, "train", 300, None), 1)
    calls = []

    def fine_tuned():  # the network as it was: the fine-tuned file then loses exactly what the first one did
        calls.append(1)
        return model, {"epochs": 0}

    data = {"calibration": calibration[:64], "selection": selection, "test": real_images("digits", 3, 32, "test", 40, None),
            "max_drop": -1.0, "fine_tuned": fine_tuned}  # a drop below zero cannot be met
    q = runtime_int8(runtime, model, shape, fp32, int8, data, 1)
    assert [t["remedy"] for t in q["tried"]] == ["post-training", "qat"] and calls == [1]
    assert q["tried"][1]["epochs"] == 0 and q["tried"][1]["selection_drop"] == q["tried"][0]["selection_drop"]
    assert q["remedy"] == "post-training" and q["selection_images"] == 100 and not q["within_drop"]
    assert int8.is_file() and sorted(p.name for p in tmp_path.iterdir()) == sorted(["arch.json", int8.name, fp32.name])


@pytest.mark.parametrize("name,fmt,scheme", [("executorch", "pte", "XNNPACKQuantizer"), ("litert", "tflite", "PT2EQuantizer")])
def test_an_int8_export_to_another_runtime_calibrates_measures_accuracy_and_times_both_files(name, fmt, scheme,
                                                                                           tmp_path):
    require(name)
    from hwnas.export import export

    report = export(_small_routed(tmp_path), tmp_path / "m.onnx", dataset="digits", formats=[fmt], quantize="int8",
                    runs=5, qat_epochs=0)  # fine-tuning has its own test
    q = report["runtimes"][fmt]["int8"]
    assert Path(q["path"]) == tmp_path / f"m.int8.{fmt}" and report["int8"]["path"] == str(tmp_path / "m.int8.onnx")
    assert q["test_images"] == 360 and q["calibration_images"] == 256 and scheme in q["scheme"]
    assert q["selection_images"] == 479 and q["tried"][0]["remedy"] == "post-training"  # a third of 1437
    assert q["remedy"] == min(q["tried"], key=lambda t: t["selection_drop"])["remedy"]
    assert q["accuracy_drop"] == pytest.approx(q["fp32_acc"] - q["int8_acc"])
    assert q["within_drop"] == (q["accuracy_drop"] <= q["max_accuracy_drop"] == 0.01)
    assert q["speedup"] == pytest.approx(report["runtimes"][fmt]["latency"]["measured_ms"] / q["measured_ms"])
    assert (tmp_path / f"m.int8.{fmt}").stat().st_size < 0.6 * (tmp_path / f"m.{fmt}").stat().st_size
