"""Latency keys, tables, statistics, kits and runners."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hwnas.cli import main
from hwnas.errors import ArchitectureError, ConfigError, LatencyError
from hwnas.latency.keys import OpKey, build_op, cell_space_keys, genotype_keys, routed_arch_keys, routing_space_keys
from hwnas.latency.table import load_table, save_table
from hwnas.archs.routed import RoutedArch, RoutedBlock
from hwnas.spaces.definition import load_space
from profilers import measure as timing

from latency_helpers import TINY_SPACE, synthetic_table

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return load_space(path)


def test_routing_connections_follow_the_rules(tiny):
    # 0 -> 3 stops (two stages ahead); 1 -> final stops (stage 1 -> 3); block 2 feeds only block 3
    assert [tiny.targets(b) for b in range(4)] == [[1, 2], [2, 3], [3], [4]]
    assert tiny.sources(tiny.final_block) == [3]


def test_routing_space_keys_hand_counted(tiny):
    keys = routing_space_keys(tiny)
    # stem 2 + 5 connections x 2 head ops + 1 non-skip stack op at blocks 1 and 3 + final branch + classifier
    assert len(keys) == 2 + 10 + 2 + 1 + 1
    names = {k.name for k in keys}
    assert "conv3x3_bn_relu6:3x32x32:8:s2:b1:float32" in names          # stem conv, 32 -> 16
    assert "mbconv_k3_t1:8x16x16:8:s1:b1:float32" in names              # the stem op in block 0
    assert "mbconv_k5_t6:8x16x16:16:s2:b1:float32" in names             # head 0 -> 2
    assert "mbconv_k3_t3:12x8x8:20:s1:b1:float32" in names              # head 1 -> 3
    assert "mbconv_k3_t3:12x8x8:12:s1:b1:float32" in names              # stack of block 1
    assert "conv1x1_bn_relu6:20x8x8:32:s1:b1:float32" in names          # final 1x1 from block 3
    assert "gap_linear:32x8x8:10:s1:b1:float32" in names
    assert not any(k.op == "skip_connect" for k in keys)


def test_shipped_spaces_key_counts():
    space = load_space("densenas_224")
    # 51 head connections x 6 + 13 blocks x 6 stack MBConvs + stem 2 + 3 final branches + classifier
    assert len(space.connections()) == 54
    assert len(routing_space_keys(space)) == 51 * 6 + 13 * 6 + 2 + 3 + 1
    assert len(routing_space_keys(load_space("densenas_32"))) == 390


def test_cell_space_keys_hand_counted(tmp_path):
    path = tmp_path / "cells.yaml"
    path.write_text("kind: cell\nname: c\ninit_channels: 4\nlayers: 3\nnodes: 2\n"
                    "primitives: [none, max_pool_3x3, skip_connect, sep_conv_3x3]\n")
    keys = {k.name for k in cell_space_keys(load_space(path))}
    # stem 1; cell 0: one shared preprocess key + 2 ops; cells 1, 2 (reductions): 2 preprocess + 3 ops at
    # stride 2 (skip is a factorized reduce) + 2 ops at stride 1; classifier 1
    assert len(keys) == 1 + 3 + 7 + 7 + 1
    assert {"conv3x3_bn:3x32x32:12:s1:b1:float32", "relu_conv1x1_bn:12x32x32:4:s1:b1:float32",
            "factorized_reduce:8x32x32:16:s2:b1:float32", "factorized_reduce:16x16x16:16:s2:b1:float32",
            "sep_conv_3x3:16x8x8:16:s1:b1:float32", "gap_linear:32x8x8:10:s1:b1:float32"} <= keys


def test_key_fields_and_module_shapes():
    import torch

    key = OpKey("mbconv_k5_t6", 24, 32, 56, 2)
    assert (key.kernel, key.expansion) == (5, 6)
    assert OpKey("sep_conv_3x3", 8, 8, 8).kernel == 3 and OpKey("gap_linear", 8, 10, 4).kernel == 1
    assert build_op(key)(torch.zeros(key.input_shape)).shape == (1, 32, 28, 28)


def test_table_round_trip_and_prediction_sums_the_right_rows(tiny, tmp_path):
    table, latency = synthetic_table(tiny)
    path = save_table(table, tmp_path / "tiny.csv")
    loaded = load_table(path)
    pd.testing.assert_frame_equal(loaded.rows, table.rows, check_dtype=False)
    assert loaded.meta == json.loads((tmp_path / "tiny.json").read_text())
    arch = RoutedArch("tiny", (RoutedBlock(2, "mbconv_k5_t6"), RoutedBlock(3, "mbconv_k3_t3", ("mbconv_k3_t3",))))
    names = ["conv3x3_bn_relu6:3x32x32:8:s2:b1:float32", "mbconv_k3_t1:8x16x16:8:s1:b1:float32",
             "mbconv_k5_t6:8x16x16:16:s2:b1:float32", "mbconv_k3_t3:16x8x8:20:s1:b1:float32",
             "mbconv_k3_t3:20x8x8:20:s1:b1:float32", "conv1x1_bn_relu6:20x8x8:32:s1:b1:float32",
             "gap_linear:32x8x8:10:s1:b1:float32"]
    parts = routed_arch_keys(tiny, arch)
    assert [k.name for _, k in parts] == names
    # each op's time less the per-call overhead, plus the overhead once
    assert loaded.predict(k for _, k in parts) == pytest.approx(sum(latency[n] - 0.5 for n in names) + 0.5)


def test_network_model_is_fitted_on_calibration_networks(tiny):
    from hwnas.latency.kit import fit_network_model

    results = pd.DataFrame({"key": ["a", "b", "network:0", "network:1", "network:2"],
                            "p10_ms": [2.0, 3.0, 0.9 * 4.5, 0.8 * 6.0, 0.95 * 3.0]}).set_index("key")
    networks = [{"key": "network:0", "ops": ["a", "b"]}, {"key": "network:1", "ops": ["a", "b", "a"]},
                {"key": "network:2", "ops": ["b"]}]
    # op sums less the 0.5 ms overhead per op, plus it once: 4.5, 6.0 and 3.0 ms; the median ratio is 0.9
    # (three networks are too few to hold one out of a two-number fit)
    scale, op_cost, fit = fit_network_model(results, networks, overhead=0.5)
    assert (scale, op_cost, fit["model"]) == (pytest.approx(0.9), 0.0, "ratio")
    assert fit["networks"][1]["ops_sum_ms"] == pytest.approx(6.0)
    table, latency = synthetic_table(tiny, network_scale=0.9)
    keys = routing_space_keys(tiny)[:3]
    assert table.predict(keys) == pytest.approx(0.9 * (sum(latency[k.name] - 0.5 for k in keys) + 0.5))


def test_a_per_op_call_cost_is_fitted_when_it_predicts_held_out_networks_better(tiny):
    from hwnas.latency.kit import fit_network_model

    # networks of 1 to 6 ops, each op's own call costing 0.2 ms more than the 0.5 ms trivial call
    ops = {"a": 2.0, "b": 3.0, "c": 1.5}
    nets = [["a"], ["a", "b"], ["b", "c", "a"], ["c", "c", "b", "a"], ["a", "a", "b", "b", "c"], ["c"] * 6]
    truth = [0.95 * (sum(ops[o] - 0.5 - 0.2 for o in net) + 0.5) for net in nets]
    results = pd.DataFrame({"key": [*ops, *(f"network:{i}" for i in range(len(nets)))],
                            "p10_ms": [*ops.values(), *truth]}).set_index("key")
    networks = [{"key": f"network:{i}", "ops": net} for i, net in enumerate(nets)]
    scale, op_cost, fit = fit_network_model(results, networks, overhead=0.5)
    assert (scale, op_cost, fit["model"]) == (pytest.approx(0.95), pytest.approx(0.2), "per_op_cost")
    assert fit["held_out_error_pct"]["per_op_cost"] < 1e-6 < fit["held_out_error_pct"]["ratio"]
    table, latency = synthetic_table(tiny, network_scale=0.95, op_cost_ms=0.2)
    keys = routing_space_keys(tiny)[:3]
    assert table.predict(keys) == pytest.approx(0.95 * (sum(latency[k.name] - 0.7 for k in keys) + 0.5))


def test_missing_key_names_the_key_and_the_command(tiny):
    table, _ = synthetic_table(tiny)
    with pytest.raises(LatencyError, match=r"lacks 1 key.*mbconv_k7_t6:8x16x16:12.*hwnas profile --space tiny"):
        table.predict([OpKey("mbconv_k7_t6", 8, 12, 16, 2)])
    with pytest.raises(LatencyError, match="batch 1, not 8"):
        table.require([OpKey("mbconv_k3_t3", 8, 12, 16, 2, batch=8)])
    other = load_space("densenas_32")
    with pytest.raises(LatencyError, match="profiled for space tiny, not densenas_32"):
        table.check_for(other.name, routing_space_keys(other))
    with pytest.raises(LatencyError, match="measured with onnxruntime, not torch"):
        table.check_for("tiny", routing_space_keys(tiny), runtime="torch")
    assert table.check_for("tiny", routing_space_keys(tiny), runtime="onnxruntime") is table


@pytest.mark.parametrize("corrupt, message", [
    (lambda df: df.assign(median_ms=-df.median_ms), "median_ms must be positive"),
    (lambda df: df.assign(p10_ms=float("nan")), "p10_ms is missing or not a number"),
    (lambda df: pd.concat([df, df.iloc[:1]]), "appears more than once"),
    (lambda df: df.drop(columns=["cv"]), "missing column"),
    (lambda df: df.assign(c_in=df.c_in + 1), "does not match its signature"),
])
def test_corrupt_tables_are_clear_errors(tiny, tmp_path, corrupt, message):
    table, _ = synthetic_table(tiny)
    path = save_table(table, tmp_path / "t.csv")
    corrupt(pd.read_csv(path)).to_csv(path, index=False)
    with pytest.raises(LatencyError, match=message):
        load_table(path)


def test_unreadable_or_undescribed_tables(tiny, tmp_path):
    table, _ = synthetic_table(tiny)
    path = save_table(table, tmp_path / "t.csv")
    path.write_bytes(b"\x00\xff\x00garbage\n\"unclosed")
    with pytest.raises(LatencyError):
        load_table(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(LatencyError, match="no metadata file"):
        load_table(path)
    with pytest.raises(LatencyError, match="not found"):
        load_table(tmp_path / "absent.csv")


def test_table_from_another_cpu_warns(tiny, tmp_path, caplog):
    table, _ = synthetic_table(tiny, device={"cpu_model": "Imaginary ARM Cortex-Z9"})
    path = save_table(table, tmp_path / "t.csv")
    with caplog.at_level("WARNING", logger="hwnas"):
        load_table(path)
    assert "Imaginary ARM Cortex-Z9" in caplog.text


def test_statistics_on_known_samples():
    s = timing.statistics([0.001, 0.002, 0.003, 0.004, 0.100], groups=1)
    assert s["median_ms"] == pytest.approx(3.0) and s["mean_ms"] == pytest.approx(22.0)
    assert s["std_ms"] == pytest.approx(math.sqrt(sum((x - 22) ** 2 for x in (1, 2, 3, 4, 100)) / 4))
    assert s["cv"] == pytest.approx(s["std_ms"] / 22.0) and s["count"] == 5
    assert s["p10_ms"] == pytest.approx(1.4)  # numpy's linear interpolation between 1 and 2
    # two groups [1, 1] and [2, 4] ms: 10th percentiles 1 and 2.2 differ by 120% of the overall one (1 ms)
    assert timing.statistics([0.001, 0.001, 0.002, 0.004], groups=2)["round_spread"] == pytest.approx(1.2)


def test_measure_interleaves_and_remeasures_unstable_keys(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    order = []
    shaky_calls = [0]

    def steady(name, ms):
        def call():
            order.append(name)
            clock[0] += ms / 1e3
        return call

    def shaky():  # noisy during its first 60 calls (warm-up and the first pass), steady afterwards
        order.append("shaky")
        shaky_calls[0] += 1
        clock[0] += (5.0 if shaky_calls[0] % 2 and shaky_calls[0] <= 60 else 1.0) / 1e3

    calls = {"a": steady("a", 2.0), "b": steady("b", 3.0), "shaky": shaky}
    results = timing.measure(calls, warmup=10, runs=50, seed=1)
    assert results["a"]["median_ms"] == pytest.approx(2.0) and results["a"]["cv"] == pytest.approx(0.0)
    assert results["a"]["remeasured"] == 0 and results["a"]["stable"]
    assert results["shaky"]["remeasured"] == 1 and results["shaky"]["stable"]
    assert results["shaky"]["median_ms"] == pytest.approx(1.0)
    # after the warm-up (10 calls per key in a row), 50 rounds each call every key once, in varying order
    assert order[:30] == ["a"] * 10 + ["b"] * 10 + ["shaky"] * 10
    rounds = [order[30 + 3 * r:33 + 3 * r] for r in range(50)]
    assert all(sorted(r) == ["a", "b", "shaky"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1


def test_measure_networks_spreads_each_networks_bursts_over_a_host_whose_speed_changes(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    order = []

    def network(name):
        def call():  # the host runs at two speeds, switching every 200 ms, and starts slow
            order.append(name)
            clock[0] += (1.5 if (clock[0] // 0.2) % 2 == 0 else 1.0) / 1e3
        return call

    results = timing.measure_networks({"a": network("a"), "b": network("b")}, warmup=10, runs=100, burst=5, seed=0,
                                      min_span_s=0)
    # one network's 100 timed calls in a row (burst=100) would put all of "a" in the first slow stretch
    assert results["a"]["p10_ms"] == pytest.approx(1.0) and results["b"]["p10_ms"] == pytest.approx(1.0)
    assert results["a"]["count"] == results["b"]["count"] == 100
    # after the warm-up, 20 rounds each give every network one turn: an untimed call, then 5 timed ones
    turns = [order[20 + 6 * t:26 + 6 * t] for t in range(40)]
    assert all(len(set(turn)) == 1 for turn in turns)
    assert all(sorted(turns[2 * r][0] + turns[2 * r + 1][0]) == ["a", "b"] for r in range(20))


def test_fast_networks_get_enough_runs_to_span_the_minimum_measuring_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def call():  # 1 ms a call: two networks' rounds take 2 ms, so 1.5 s needs 750 of them
        clock[0] += 1e-3

    results = timing.measure_networks({"a": call, "b": call}, warmup=2, runs=100, burst=5, seed=0, min_span_s=1.5)
    assert results["a"]["count"] == results["b"]["count"] == 750
    # slow networks keep the runs asked for
    assert timing.measure_networks({"a": call}, warmup=2, runs=100, burst=5, seed=0, min_span_s=0.05)["a"]["count"] == 100


def test_space_definition_errors_name_the_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(TINY_SPACE.replace("sizes:        [16, 8, 8, 8]", "sizes:        [16, 8, 8, 2]"))
    with pytest.raises(ConfigError, match="bad.yaml.*no block may feed block 3"):
        load_space(path)
    path.write_text(TINY_SPACE + "colour: blue\n")
    with pytest.raises(ConfigError, match="colour: unknown key"):
        load_space(path)
    path.write_text(TINY_SPACE.replace("stack_layers: [0, 2, 0, 1]", "stack_layers: [0, 2, 0]"))
    with pytest.raises(ConfigError, match="stack_layers has 3 entries but widths has 4"):
        load_space(path)


def test_routed_arch_rejects_broken_paths(tiny):
    with pytest.raises(ArchitectureError, match="no connection from block 0 to block 3"):
        RoutedArch("tiny", (RoutedBlock(3, "mbconv_k3_t3"),)).check(tiny)
    with pytest.raises(ArchitectureError, match="cannot feed the final"):
        RoutedArch("tiny", (RoutedBlock(1, "mbconv_k3_t3"),)).check(tiny)
    with pytest.raises(ArchitectureError, match="stack ops"):
        RoutedArch("tiny", (RoutedBlock(1, "mbconv_k3_t3", ("mbconv_k3_t3",) * 3), RoutedBlock(3, "mbconv_k3_t3"))).check(tiny)


def _run_isolated(args, cwd):
    """Run the copied profilers/ort_runner.py as a device would, with torch, hwnas, pandas and scipy made
    unimportable (modules of those names that raise ImportError shadow the installed ones)."""
    blocked = cwd / "blocked"
    for name in ("torch", "hwnas", "pandas", "scipy", "profilers"):
        (blocked / name).mkdir(parents=True, exist_ok=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this device')\n")
    env = {**os.environ, "PYTHONPATH": str(blocked)}
    return subprocess.run([sys.executable, "profilers/ort_runner.py", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_kit_runs_on_a_device_without_torch_and_ingests(tiny, tmp_path):
    from hwnas.latency.kit import build_kit

    manifest = build_kit(tiny, tmp_path / "kit")
    assert len(manifest["entries"]) == 16 and (tmp_path / "kit" / manifest["entries"][0]["file"]).is_file()
    device = tmp_path / "device"
    shutil.copytree(ROOT / "profilers", device / "profilers")
    shutil.copytree(tmp_path / "kit", device / "kit")
    proc = _run_isolated(["kit", "--out", "results.csv", "--warmup", "2", "--runs", "10"], device)
    assert proc.returncode == 0, proc.stderr
    description = json.loads((device / "results.json").read_text())
    assert description["runtime"] == "onnxruntime" and description["threads"] == 1
    assert main(["profile", "ingest", str(device / "results.csv"), "--out", str(tmp_path / "t.csv"),
                 "--name", "bare"]) == 0
    table = load_table(tmp_path / "t.csv")
    assert set(table.rows.index) == {k.name for k in routing_space_keys(tiny)}
    # the bare call costs less than a typical op (the cheapest op, a few microseconds, is within its noise)
    assert table.meta["device_name"] == "bare" and 0 < table.overhead_ms < table.rows.p10_ms.median()
    # a results file is never overwritten; a kit folder is not reused; nor is a table's .json alone
    assert _run_isolated(["kit", "--out", "results.csv"], device).returncode == 2
    (tmp_path / "t.csv").unlink()
    before = (tmp_path / "t.json").read_bytes()
    assert main(["profile", "ingest", str(device / "results.csv"), "--out", str(tmp_path / "t.csv")]) == 2
    assert (tmp_path / "t.json").read_bytes() == before and not (tmp_path / "t.csv").exists()
    assert main(["profile", "kit", "--space", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "kit")]) == 2


def test_ingest_rejects_results_from_another_kit(tiny, tmp_path, capsys):
    from hwnas.latency.kit import build_kit
    from profilers.ort_runner import run_kit

    build_kit(tiny, tmp_path / "kit")
    run_kit(tmp_path / "kit", tmp_path / "r.csv", warmup=1, runs=2)
    rows = pd.read_csv(tmp_path / "r.csv")
    rows.loc[0, "key"] = "mbconv_k3_t3:99x8x8:99:s1:b1:float32"
    rows.to_csv(tmp_path / "r.csv", index=False)
    assert main(["profile", "ingest", str(tmp_path / "r.csv"), "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err
    assert "comes from another kit" in err and err.count("\n") == 1
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("precision,runs", [("float32", 100), ("int8", 300)])
def test_profile_times_each_key_as_often_as_its_precision_needs(tiny, tmp_path, monkeypatch, precision, runs):
    from hwnas.runtimes import get_runtime

    seen = []

    def profile_here(space, results_csv, threads, batch, warmup, runs, *rest):
        seen.append(runs)
        raise RuntimeError("stop")

    monkeypatch.setattr(type(get_runtime("ort")), "profile_here", lambda self, *a: profile_here(*a))
    monkeypatch.setattr(timing, "describe_device", lambda: {"load_average_1min": 0.0})
    main(["profile", "--space", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "t.csv"), "--precision",
          precision, "--quiet"])  # stopped where the runner would start
    assert seen == [runs] and not (tmp_path / "t.csv").exists()


def test_one_step_profile_and_validate_on_a_tiny_space(tiny, tmp_path):
    import random

    from hwnas.latency.networks import sample_arch
    from hwnas.latency.validate import predict, validate

    table_path = tmp_path / "tiny.csv"
    assert main(["profile", "--space", str(tmp_path / "tiny.yaml"), "--out", str(table_path), "--runs", "10",
                 "--warmup", "2", "--quiet"]) == 0
    report = validate(table_path, tmp_path / "tiny.yaml", samples=4, plot=tmp_path / "v.png", quiet=True)
    table = load_table(table_path)
    archs = [sample_arch(tiny, random.Random(0)) for _ in range(1)]
    assert report["networks"][0]["arch"] == archs[0].to_dict()
    for net in report["networks"]:
        arch = RoutedArch.from_dict(net["arch"])
        assert net["predicted_ms"] == pytest.approx(predict(table, tiny, arch)["predicted_ms"])
        assert net["measured_ms"] > 0
    assert 0 <= report["within_10pct"] <= 1 and (tmp_path / "v.png").stat().st_size > 0
    assert report["same_host"] and report["differs"] == []  # profiled a moment ago, here


def test_genotype_keys_cover_a_published_cell():
    from hwnas.kinds import load_arch

    space = load_space("darts_cifar10")
    parts = genotype_keys(space, load_arch("DARTS_V2", "cell"))
    assert {k for _, k in parts} <= set(cell_space_keys(space))
    # 20 cells x 2 preprocessing ops + stem + classifier + every non-identity op of the cells
    assert sum(1 for p, _ in parts if p.startswith("cell")) >= 40


def test_torch_runner_and_backend(tiny, tmp_path):
    from hwnas.latency.kit import build_kit

    build_kit(tiny, tmp_path / "kit")
    proc = subprocess.run([sys.executable, str(ROOT / "profilers" / "torch_runner.py"), str(tmp_path / "kit"), "--out",
                           str(tmp_path / "r.csv"), "--warmup", "1", "--runs", "5"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert main(["profile", "ingest", str(tmp_path / "r.csv"), "--out", str(tmp_path / "t.csv")]) == 0
    table = load_table(tmp_path / "t.csv")
    assert table.meta["runtime"] == "torch" and table.meta["provider"] == "cpu" and len(table) == 16
    assert main(["profile", "--space", str(tmp_path / "tiny.yaml"), "--backend", "torch", "--out",
                 str(tmp_path / "t2.csv"), "--runs", "3", "--warmup", "1", "--quiet"]) == 0
    assert set(load_table(tmp_path / "t2.csv").rows.index) == set(table.rows.index)


def test_profile_refuses_to_overwrite_a_table(tiny, tmp_path, capsys):
    table, _ = synthetic_table(tiny)
    path = save_table(table, tmp_path / "t.csv")
    before = path.read_bytes()
    assert main(["profile", "--space", str(tmp_path / "tiny.yaml"), "--out", str(path), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err and path.read_bytes() == before


@pytest.mark.parametrize("space_name", ["densenas_224", "densenas_32", "darts_cifar10"])
def test_shipped_tables_cover_their_spaces(space_name):
    from hwnas.latency.keys import space_keys

    table = load_table(ROOT / "latency_tables" / "amd-epyc-2core-ort-1thread" / f"{space_name}.csv")
    space = load_space(space_name)
    table.check_for(space.name, space_keys(space), runtime="onnxruntime")
    assert (table.batch, table.meta["threads"], table.estimator) == (1, 1, "p10_ms")
    assert 0.5 < table.scale < 1.2 and len(table.meta["calibration_networks"]) == 8


@pytest.mark.slow
def test_ort_runner_in_a_fresh_venv_with_only_numpy_and_onnxruntime(tiny, tmp_path):
    """The real device setup: a new virtual environment with numpy and onnxruntime from the package index."""
    from hwnas.latency.kit import build_kit

    build_kit(tiny, tmp_path / "kit")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "numpy", "onnxruntime"], check=True, timeout=900)
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    proc = subprocess.run([python, str(ROOT / "profilers" / "ort_runner.py"), str(tmp_path / "kit"), "--out",
                           str(tmp_path / "r.csv"), "--runs", "5", "--warmup", "1"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert main(["profile", "ingest", str(tmp_path / "r.csv"), "--out", str(tmp_path / "t.csv")]) == 0


def test_profile_warns_when_most_keys_were_unstable(capsys):
    from hwnas.cli import _show_profile

    keys = [f"op{i}:8x8x8:8:s1:b1:float32" for i in range(10)]
    _show_profile({"table": "t.csv", "keys": 10, "unstable_keys": keys[:2]})
    quiet = capsys.readouterr().out
    assert "2 key(s) stayed unstable" in quiet and "warning" not in quiet
    _show_profile({"table": "t.csv", "keys": 10, "unstable_keys": keys[:8]})
    assert "warning: 80% of the keys were unstable: the device was busy" in capsys.readouterr().out


def test_a_table_written_with_spaces_after_the_commas_reads_as_the_same_table(tmp_path):
    import shutil

    from hwnas.latency.table import load_table

    source = Path("latency_tables/amd-epyc-2core-ort-1thread/densenas_32_small.csv")
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("\n".join(", ".join(line.split(",")) for line in source.read_text().splitlines()) + "\n")
    shutil.copy(source.with_suffix(".json"), spaced.with_suffix(".json"))
    original, again = load_table(source), load_table(spaced)
    assert len(again) == len(original) > 100
    assert again.predict_names(list(original._latency)[:5]) == original.predict_names(list(original._latency)[:5])
