"""Fuzzing every kind of file a user hands hwnas: valid files mutated (keys dropped or given another type,
lines duplicated, bytes truncated or flipped, text re-encoded), then fed to the command that reads them,
in-process. Every outcome must be a success or exit code 2 with one line on stderr and no traceback, the
input files must be left as they were, and a failed command must leave no output behind.

By default each kind runs a few derandomised examples (the same ones every run); the `slow` test runs
many more, drawn afresh (`HWNAS_FUZZ_EXAMPLES` sets how many).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwnas.cli import main

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "latency_tables/amd-epyc-2core-ort-1thread/densenas_32_small.csv"
SMALL_ARCH = {"space": "densenas_32_small", "blocks": [
    {"block": b, "head": "mbconv_k3_t6", "stack": []} for b in (1, 2, 5, 6, 7, 9, 10)]}
TINY_SEARCH = ["--quiet", "--set", "search.epochs=1", "--set", "search.steps_per_epoch=1",
               "--set", "search.batch_size=8", "--set", "data.train_subset=64"]
# values a mutated key is given instead of its own
TOKENS = [None, True, -1, 0, 3.5, 1e12, "x", "", [], {}, [1, 2], {"a": 1}, "nan"]
FAST = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MANY = settings(FAST, max_examples=int(os.environ.get("HWNAS_FUZZ_EXAMPLES", 60)), derandomize=False)


# ---- mutations ----
def locations(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists."""
    found = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, value in items:
        found.append((*prefix, key))
        found.extend(locations(value, (*prefix, key)))
    return found


def mutate_tree(draw, tree: Any) -> Any:
    """The tree with one value dropped or replaced by a value of another type."""
    tree = copy.deepcopy(tree)
    path = draw(st.sampled_from(locations(tree)))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(st.sampled_from(TOKENS))
    return tree


def mutate_bytes(draw, data: bytes, text: bool = True) -> bytes:
    how = draw(st.sampled_from(["truncate", "flip", "duplicate-line", *(["encode"] if text else [])]))
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "flip":
        at, bit = draw(st.integers(0, len(data) - 1)), draw(st.integers(0, 7))
        return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1:]
    if how == "encode":
        text = data.decode("utf-8")
        encoding = draw(st.sampled_from(["utf-16", "latin-1", "utf-8-sig"]))
        if encoding == "latin-1":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + "\u00e9" + text[at:]
        return text.encode(encoding)
    lines = data.splitlines(keepends=True)
    at = draw(st.integers(0, len(lines) - 1))
    return b"".join(lines[:at + 1] + lines[at:])


def mutated_text_file(draw, data: bytes, parse: Callable[[bytes], Any], dump: Callable[[Any], bytes]) -> bytes:
    """Half the time a structural change (a key dropped or retyped), half a change of the bytes."""
    if draw(st.booleans()):
        return dump(mutate_tree(draw, parse(data)))
    return mutate_bytes(draw, data)


def as_json(tree: Any) -> bytes:
    return (json.dumps(tree, indent=2) + "\n").encode()


def as_yaml(tree: Any) -> bytes:
    return yaml.safe_dump(tree, sort_keys=False).encode()


def as_csv_rows(data: bytes) -> list[list[str]]:
    return [line.split(",") for line in data.decode().splitlines()]


def csv_from_rows(rows: list[Any]) -> bytes:
    """Rows back to CSV text; a row the mutation replaced by a single value becomes that value's line."""
    return "".join((",".join(map(str, row)) if isinstance(row, list) else str(row)) + "\n" for row in rows).encode()


# ---- the contract ----
def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def check_outcome(run: Callable[[], int], inputs: Path, outputs: list[Path], capsys, prefix: str = "hwnas") -> int:
    """Run a command; it succeeds, or fails with exit 2, one line, no traceback and no output left."""
    before = snapshot(inputs)
    capsys.readouterr()
    try:
        code = run()
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.startswith(f"{prefix}: error: ") and err.count("\n") == 1, err
        assert not any(p.exists() for p in outputs), "a failed command left output behind"
    assert snapshot(inputs) == before, "an input file was changed"
    return code


def fresh(tmp_path: Path) -> Path:
    """A folder of its own for one example (hypothesis runs many in one test's tmp_path)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


# ---- one driver per kind of file ----
def fuzz_config(draw, tmp_path, capsys):
    work = fresh(tmp_path)
    source = (ROOT / "configs/search/darts_digits.yaml").read_bytes()
    (work / "in").mkdir()
    recipe = work / "in" / "recipe.yaml"
    recipe.write_bytes(mutated_text_file(draw, source, yaml.safe_load, as_yaml))
    out = work / "run"
    check_outcome(lambda: main(["search", "darts", "--config", str(recipe), "--out", str(out), *TINY_SEARCH]),
                  work / "in", [out], capsys)


def fuzz_architecture(draw, tmp_path, capsys):
    from hwnas.archs.genotype import ZOO

    work = fresh(tmp_path)
    source = as_json(draw(st.sampled_from([ZOO["DARTS_V2"].to_dict(), SMALL_ARCH])))
    (work / "in").mkdir()
    arch = work / "in" / "arch.json"
    arch.write_bytes(mutated_text_file(draw, source, json.loads, as_json))
    check_outcome(lambda: main(["info", "--arch", str(arch)]), work / "in", [], capsys)


def fuzz_table(draw, tmp_path, capsys):
    work = fresh(tmp_path)
    (work / "in").mkdir()
    table = work / "in" / "table.csv"
    shutil.copy(TABLE, table)
    shutil.copy(TABLE.with_suffix(".json"), table.with_suffix(".json"))
    if draw(st.booleans()):  # the rows
        data = TABLE.read_bytes()
        if draw(st.booleans()):
            rows = as_csv_rows(data)
            row, column = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(rows[0]) - 1))
            if draw(st.booleans()):
                rows = [r[:column] + r[column + 1:] for r in rows]  # a column dropped
            else:
                rows[row][column] = draw(st.sampled_from(["", "x", "-1", "0", "nan", "inf", "1e300"]))
            table.write_bytes(csv_from_rows(rows))
        else:
            table.write_bytes(mutate_bytes(draw, data))
    else:  # the metadata
        meta = table.with_suffix(".json")
        meta.write_bytes(mutated_text_file(draw, meta.read_bytes(), json.loads, as_json))
    arch = work / "in" / "arch.json"
    arch.write_bytes(as_json(SMALL_ARCH))
    check_outcome(lambda: main(["lut", "predict", "--table", str(table), "--arch", str(arch)]), work / "in", [], capsys)


@pytest.fixture(scope="module")
def kit_and_results(tmp_path_factory):
    """A profiling kit of a tiny routing space, and what the device runner measured on it."""
    from latency_helpers import load_tiny_space

    from hwnas.latency.kit import build_kit
    from profilers.ort_runner import run_kit

    folder = tmp_path_factory.mktemp("kit")
    build_kit(load_tiny_space(folder), folder / "kit")
    run_kit(folder / "kit", folder / "results.csv", warmup=0, runs=2)
    return folder


def fuzz_kit(draw, tmp_path, capsys, kit_and_results):
    from profilers.ort_runner import main as runner

    work = fresh(tmp_path)
    kit = work / "in" / "kit"
    shutil.copytree(kit_and_results / "kit", kit)
    if draw(st.booleans()):
        manifest = kit / "manifest.json"
        manifest.write_bytes(mutated_text_file(draw, manifest.read_bytes(), json.loads, as_json))
    else:
        model = draw(st.sampled_from(sorted(kit.rglob("*.onnx"))))
        model.write_bytes(mutate_bytes(draw, model.read_bytes(), text=False) if draw(st.booleans()) else model.read_bytes()[:100])
    out = work / "results.csv"
    check_outcome(lambda: runner([str(kit), "--out", str(out), "--warmup", "0", "--runs", "1"]),
                  work / "in", [out, out.with_suffix(".json")], capsys, prefix="ort_runner")


def fuzz_results(draw, tmp_path, capsys, kit_and_results):
    work = fresh(tmp_path)
    (work / "in").mkdir()
    results = work / "in" / "results.csv"
    shutil.copy(kit_and_results / "results.csv", results)
    shutil.copy(kit_and_results / "results.json", results.with_suffix(".json"))
    target = draw(st.sampled_from([results, results.with_suffix(".json")]))
    parse = json.loads if target.suffix == ".json" else as_csv_rows
    dump = as_json if target.suffix == ".json" else csv_from_rows
    target.write_bytes(mutated_text_file(draw, target.read_bytes(), parse, dump))
    out = work / "table.csv"
    check_outcome(lambda: main(["profile", "ingest", str(results), "--out", str(out)]),
                  work / "in", [out, out.with_suffix(".json")], capsys)


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory) -> Path:
    """A real weights file of a small cell network, as `hwnas train` writes it."""
    from hwnas.config import ModelConfig
    from hwnas.archs.genotype import ZOO
    from hwnas.kinds import build_model
    from hwnas.runs import save_checkpoint
    from hwnas.train import weights_file

    model_cfg = ModelConfig(init_channels=8, layers=5, auxiliary=False)
    model = build_model(ZOO["DARTS_V2"], model_cfg, 10, 1)
    path = tmp_path_factory.mktemp("weights") / "weights.pt"
    save_checkpoint(path, weights_file(ZOO["DARTS_V2"].to_dict(), model_cfg, 10, 1, 32, "digits", 1, model))
    return path


def fuzz_checkpoint(draw, tmp_path, capsys, trained_weights):
    weights_bytes = trained_weights.read_bytes()
    work = fresh(tmp_path)
    (work / "in").mkdir()
    weights = work / "in" / "weights.pt"
    if draw(st.booleans()):
        weights.write_bytes(mutate_bytes(draw, weights_bytes, text=False) if draw(st.booleans()) else weights_bytes[:-100])
    else:  # a loadable file whose content is wrong
        state = torch.load(io.BytesIO(weights_bytes), weights_only=True)
        changed = mutate_tree(draw, {k: v for k, v in state.items() if k != "state_dict"})
        tensors = dict(state["state_dict"])
        if draw(st.booleans()):
            name = draw(st.sampled_from(sorted(tensors)))
            tensors[name] = draw(st.sampled_from([torch.zeros(3), torch.zeros(0), "x"]))
        changed["state_dict"] = tensors
        buffer = io.BytesIO()
        torch.save(changed, buffer)
        weights.write_bytes(buffer.getvalue())
    out = work / "model.onnx"
    check_outcome(lambda: main(["export", "--weights", str(weights), "--out", str(out)]),
                  work / "in", [out], capsys)


DRIVERS = {"config": fuzz_config, "architecture": fuzz_architecture, "table": fuzz_table,
           "kit": fuzz_kit, "results": fuzz_results, "checkpoint": fuzz_checkpoint}


def run_driver(kind, data, tmp_path, capsys, kit_and_results, trained_weights):
    driver = DRIVERS[kind]
    extra = {"kit": (kit_and_results,), "results": (kit_and_results,), "checkpoint": (trained_weights,)}.get(kind, ())
    driver(data.draw, tmp_path, capsys, *extra)


@pytest.mark.parametrize("kind", list(DRIVERS))
@FAST
@given(data=st.data())
def test_a_mutated_file_is_used_or_refused_in_one_line(kind, data, tmp_path, capsys, kit_and_results, trained_weights,
                                                       monkeypatch):
    monkeypatch.chdir(ROOT)
    run_driver(kind, data, tmp_path, capsys, kit_and_results, trained_weights)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(DRIVERS))
@MANY
@given(data=st.data())
def test_many_mutated_files(kind, data, tmp_path, capsys, kit_and_results, trained_weights, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_driver(kind, data, tmp_path, capsys, kit_and_results, trained_weights)


# what the many examples found, kept as fixed cases
@pytest.mark.parametrize("row, column, value", [
    (1, 2, "inf"),  # c_in of the first row: a float infinity cannot become an integer
    (2, -1, "0/070781"),  # p10_ms, the statistic the table predicts from, with a flipped bit
])
def test_a_table_row_with_a_damaged_number_is_refused(row, column, value, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    table = tmp_path / "in" / "table.csv"
    rows = as_csv_rows(TABLE.read_bytes())
    rows[row][column] = value
    table.write_bytes(csv_from_rows(rows))
    shutil.copy(TABLE.with_suffix(".json"), table.with_suffix(".json"))
    arch = tmp_path / "in" / "arch.json"
    arch.write_bytes(as_json(SMALL_ARCH))
    assert check_outcome(lambda: main(["lut", "predict", "--table", str(table), "--arch", str(arch)]),
                         tmp_path / "in", [], capsys) == 2


def test_a_kit_whose_input_shape_holds_a_boolean_is_refused(tmp_path, capsys, kit_and_results):
    from profilers.ort_runner import main as runner

    kit = tmp_path / "kit"
    shutil.copytree(kit_and_results / "kit", kit)
    manifest = json.loads((kit / "manifest.json").read_text())
    manifest["entries"][3]["input_shape"][0] = True  # a bool is an int to Python, not to numpy
    (kit / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "results.csv"
    assert check_outcome(lambda: runner([str(kit), "--out", str(out), "--warmup", "0", "--runs", "1"]),
                         kit, [out, out.with_suffix(".json")], capsys, prefix="ort_runner") == 2


def test_a_runner_description_whose_unstable_keys_are_not_a_list_is_refused(tmp_path, capsys, kit_and_results):
    for value in (True, None):
        (tmp_path / "in").mkdir()
        results = tmp_path / "in" / "results.csv"
        shutil.copy(kit_and_results / "results.csv", results)
        description = json.loads((kit_and_results / "results.json").read_text())
        description["unstable_keys"] = value
        results.with_suffix(".json").write_text(json.dumps(description))
        out = tmp_path / "table.csv"
        assert check_outcome(lambda: main(["profile", "ingest", str(results), "--out", str(out)]),
                             tmp_path / "in", [out, out.with_suffix(".json")], capsys) == 2
        shutil.rmtree(tmp_path / "in")
