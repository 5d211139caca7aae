"""A shipped table is checked against this machine before a run uses it: host identity, the
calibration networks timed here, and the decision (holds / rescale / reprofile); budgets met within
-10% / +5%; tables profiled under load refused."""

import json

import onnxruntime
import pytest

from hwnas.cli import main
from hwnas.errors import LatencyError
from hwnas.latency import check, kit
from hwnas.latency.kit import calibration_networks
from hwnas.latency.table import load_table
from hwnas.pipeline import budget_verdict, choose_table
from hwnas.spaces.definition import load_space
from profilers import measure as timing

TABLE = "latency_tables/intel-xeon-2core-ort-1thread/densenas_32_small.csv"
SPACE = load_space("densenas_32_small")


def fake_timing(monkeypatch, table, factors):
    """Calibration network i measures factors[i] times what `table` predicts for it."""
    predicted = [table.predict_names(ops) for ops, _ in calibration_networks(SPACE, 1)]

    def measure(calls, *args, **kwargs):
        return {name: {table.estimator: predicted[int(name.split(":")[1])] * factors[int(name.split(":")[1])]}
                for name in calls}

    monkeypatch.setattr(timing, "measure", measure)


@pytest.mark.parametrize("factors, decision, ratio", [
    ([1.02] * 8, "holds", 1.02),
    ([1.3] * 8, "rescale", 1.3),
    ([0.77, 0.78, 0.76, 0.77, 0.77, 0.79, 0.77, 0.78], "rescale", 0.77),
    ([1.0, 1.6, 1.0, 1.6, 1.0, 1.6, 1.0, 1.6], "reprofile", 1.3),
])
def test_check_decides_from_the_calibration_networks(monkeypatch, factors, decision, ratio):
    table = load_table(TABLE)
    fake_timing(monkeypatch, table, factors)
    result = check.check_table(table, SPACE)
    assert result["decision"] == decision
    assert result["ratio"] == pytest.approx(ratio)
    assert len(result["networks"]) == 8


def test_a_table_off_by_1_3_is_rescaled_and_then_predicts_what_is_measured(tmp_path, monkeypatch):
    """A shipped table 30% slow on this host (simulated: its predictions x1.3 against the timings here)."""
    table = load_table(TABLE)
    monkeypatch.setattr(check, "host_identity", lambda: {k: table.meta["device"].get(k) for k in check.IDENTITY_FIELDS})
    monkeypatch.setattr(onnxruntime, "__version__", table.meta["runtime_version"])
    slow = table.rescaled(1.3, {"reason": "test"})
    slow_path = tmp_path / "slow.csv"
    from hwnas.latency.table import save_table

    save_table(slow, slow_path)
    fake_timing(monkeypatch, slow, [1 / 1.3] * 8)  # this machine runs as the unscaled table says
    chosen = choose_table(str(slow_path), SPACE, tmp_path, quiet=True)
    assert chosen["decision"].startswith("shipped table rescaled by 0.769")
    rescaled = load_table(chosen["table"])
    for ops, _ in calibration_networks(SPACE, 1):
        assert rescaled.predict_names(ops) == pytest.approx(table.predict_names(ops), rel=1e-9)
    assert rescaled.meta["rescaled"]["from"] == str(slow_path)
    # decided once per run: a resumed run reads the decision back
    assert choose_table(str(slow_path), SPACE, tmp_path, quiet=True) == json.loads((tmp_path / "table.json").read_text())


def test_a_table_from_another_host_is_not_used(tmp_path, monkeypatch):
    table = load_table(TABLE)
    here = {k: table.meta["device"].get(k) for k in check.IDENTITY_FIELDS}
    monkeypatch.setattr(check, "host_identity", lambda: {**here, "cpu_flags": "another-isa"})
    monkeypatch.setattr(onnxruntime, "__version__", table.meta["runtime_version"])
    calls = []
    monkeypatch.setattr(kit, "profile", lambda space, out, *args, **kwargs: calls.append((space.name, out, kwargs)))
    chosen = choose_table(TABLE, SPACE, tmp_path, quiet=True)
    assert chosen["decision"] == "profiled here (the shipped table comes from another host)"
    assert any(d.startswith("cpu_flags") for d in chosen["differs"])
    assert calls and calls[0][0] == "densenas_32_small" and calls[0][2]["allow_busy"]


def test_another_host_names_the_vector_extensions_it_lacks_or_adds(monkeypatch):
    table = load_table(TABLE)
    here = {k: table.meta["device"].get(k) for k in check.IDENTITY_FIELDS}
    table.meta["device"]["vector_isa"] = ["avx", "avx2", "fma", "avx512f", "avx512_vnni"]
    monkeypatch.setattr(check, "host_identity", lambda: {**here, "cpu_flags": "another", "vector_isa": ["avx", "avx2", "fma", "avx_vnni"]})
    same, differs = check.same_host(table, table.meta["runtime_version"])
    assert not same
    assert "vector extensions: only the table's host has avx512f avx512_vnni; only this host has avx_vnni" in differs
    # flags that differ elsewhere (a new kernel feature) leave the kernels' extensions the same
    monkeypatch.setattr(check, "host_identity", lambda: {**here, "cpu_flags": "another", "vector_isa": ["avx", "avx2", "fma", "avx512f", "avx512_vnni"]})
    assert check.same_host(table, table.meta["runtime_version"])[1][-1].startswith("vector extensions: the same")


def test_this_hosts_vector_extensions_are_read_from_its_flags(monkeypatch):
    monkeypatch.setattr(timing, "_cpuinfo", lambda: {"model name": "X", "flags": "fpu sse4_2 avx avx2 fma avx512f"})
    assert timing.host_identity()["vector_isa"] == ["sse4_2", "avx", "avx2", "fma", "avx512f"]


def test_same_model_string_is_not_the_same_host():
    table = load_table("latency_tables/amd-epyc-2core-ort-1thread/densenas_32.csv")
    same, differs = check.same_host(table, table.meta["runtime_version"])
    assert not same and differs  # the old tables record only the model string: never taken for this host


@pytest.mark.parametrize("measured, verdict", [(3.59, "under"), (3.61, "met"), (4.0, "met"), (4.19, "met"),
                                               (4.21, "over")])
def test_budget_is_met_within_minus_10_plus_5_percent(measured, verdict):
    assert budget_verdict(measured, 4.0) == verdict


def test_profiling_under_load_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kit, "MAX_LOAD", 0.5)
    monkeypatch.setattr(timing, "describe_device", lambda: {"load_average_1min": 1.7})
    out = tmp_path / "t.csv"
    assert main(["profile", "--space", "densenas_32_small", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "load average is 1.7" in err and "--allow-busy" in err and err.count("\n") == 1
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_ingest_refuses_results_profiled_under_load(tmp_path, monkeypatch):
    """Through the real runner on a tiny kit: its description records the load before measuring."""
    monkeypatch.setattr(kit, "MAX_LOAD", 0.5)
    results = tmp_path / "r.csv"
    kit_dir = tmp_path / "kit"
    tiny = tmp_path / "tiny.yaml"
    from latency_helpers import TINY_SPACE

    tiny.write_text(TINY_SPACE)
    kit.build_kit(load_space(tiny), kit_dir)
    from profilers.ort_runner import run_kit

    monkeypatch.setattr(timing, "describe_device", lambda: {"cpu_model": "x", "load_average_1min": 2.5})
    run_kit(kit_dir, results, warmup=0, runs=2)
    with pytest.raises(LatencyError, match="load average was 2.5"):
        kit.ingest(results, tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()
    assert kit.ingest(results, tmp_path / "t.csv", allow_busy=True).meta["device"]["load_average_1min"] == 2.5


def test_a_search_checks_a_table_of_this_host_and_warns_when_off(monkeypatch, caplog):
    table = load_table(TABLE)
    monkeypatch.setattr(onnxruntime, "__version__", table.meta["runtime_version"])
    monkeypatch.setattr(check, "host_identity", lambda: {k: table.meta["device"].get(k) for k in check.IDENTITY_FIELDS})
    fake_timing(monkeypatch, table, [0.7] * 8)
    with caplog.at_level("WARNING", logger="hwnas"):
        result = check.check_before_search(TABLE)
    assert result == {"checked": True, "decision": "rescale", "ratio": pytest.approx(0.7), "spread": pytest.approx(0)}
    assert "1.43x what they take here" in caplog.text
    monkeypatch.setattr(check, "host_identity", lambda: {"cpu_model": "another"})
    assert check.check_before_search(TABLE)["checked"] is False


@pytest.mark.parametrize("candidates", [0, 3])
def test_a_derived_network_that_misses_the_budget_is_derived_again(tmp_path, monkeypatch, candidates):
    """The network measures 1.25x its prediction here: over the budget; derived again with the table
    rescaled by 1.25 it lands within -10% / +5% of the budget as measured (with `derive_candidates`, the
    search's final choice among candidates is made again too)."""
    from latency_helpers import TINY_SPACE, synthetic_table

    from hwnas import pipeline
    from hwnas.config import load_config
    from hwnas.methods import SearchConfig
    from hwnas.latency.cost import RoutingCost
    from hwnas.latency.table import save_table
    from hwnas.archs.routed import RoutedArch
    from hwnas.search import search

    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    tiny = load_space(tmp_path / "tiny.yaml")
    table, _ = synthetic_table(tiny)
    save_table(table, tmp_path / "tiny.csv")
    low, high = RoutingCost(tiny, table).bounds()
    budget = low + 0.5 * (high - low)
    config = load_config(SearchConfig, "configs/search/densenas_digits.yaml", [
        f"method.space={tmp_path / 'tiny.yaml'}", f"method.table={tmp_path / 'tiny.csv'}", f"method.budget_ms={budget}",
        "search.epochs=2", "search.arch_start_epoch=1", "search.steps_per_epoch=2", "search.batch_size=8",
        f"method.derive_candidates={candidates}"])
    searched = search(config, tmp_path / "search", quiet=True)
    first = RoutedArch.from_dict(searched["arch"])
    measured = []

    def slow_by_a_quarter(space, arch, table_):
        measured.append(1.25 * RoutingCost(tiny, table).exact(arch))
        return measured[-1]

    monkeypatch.setattr(pipeline, "measure_network", slow_by_a_quarter)
    from hwnas.methods.densenas import DenseNas

    tested = []  # how many networks each final derivation tested with the shared weights
    final = DenseNas.derive_final
    monkeypatch.setattr(DenseNas, "derive_final",
                        lambda self, *a: (final(self, *a), tested.append(len(self._candidates)))[0])
    arch, fit = pipeline.fit_to_budget(config, tmp_path / "search", first, budget, tmp_path)
    assert len(tested) == 1 and (tested[0] > 1) == (candidates > 0)
    assert fit["rounds"][0]["budget"] == "over" and fit["rounds"][0]["arch"] == first.to_dict()
    # derived again under the table x1.25, the network now fits the budget as measured (the tiny space
    # may have nothing within -10%, but it is never over)
    assert len(fit["rounds"]) == 2 and fit["rounds"][1]["table_scale"] == pytest.approx(1.25)
    assert fit["rounds"][1]["budget"] in ("met", "under") and measured[-1] <= budget
    assert fit["rounds"][1]["predicted_ms"] == pytest.approx(measured[-1]) and arch.to_dict() == fit["arch"]
    assert json.loads((tmp_path / "fit.json").read_text()) == fit
