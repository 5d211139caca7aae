"""The shared search loop with DARTS on tiny digits configs: outputs, determinism, kill and resume."""

import json
import sys

import pytest
import torch
from killresume import kill_and_resume, kill_five_times

from hwnas.cli import main
from hwnas.kinds import load_arch
from hwnas.search import search

from tiny import TINY, tiny_config


def test_search_writes_a_valid_run(tmp_path):
    report = search(tiny_config("darts"), tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "arch.json", "report.json", "checkpoints/search.pt",
                 "arch_weights_normal.png", "arch_weights_reduce.png", "cell_normal.png", "cell_reduce.png"):
        assert (run / name).is_file(), name
    genotype = load_arch(run / "arch.json", "cell")
    assert len(genotype.normal) == 4 and len(genotype.reduce) == 4  # 2 nodes x 2 inputs
    assert json.loads((run / "report.json").read_text())["arch"] == genotype.to_dict()
    assert report["epochs"] == 3
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("stage,epoch,lr")
    state = torch.load(run / "checkpoints/search.pt", weights_only=True)
    assert "alphas.normal" in state["model"] and state["done"]


def test_same_seed_same_architecture_weights(tmp_path):
    search(tiny_config("darts", "search.epochs=2"), tmp_path / "a", quiet=True)
    search(tiny_config("darts", "search.epochs=2"), tmp_path / "b", quiet=True)
    a = torch.load(tmp_path / "a/checkpoints/search.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b/checkpoints/search.pt", weights_only=True)["model"]
    assert torch.equal(a["alphas.normal"], b["alphas.normal"])
    search(tiny_config("darts", "search.epochs=2", "seed=3"), tmp_path / "c", quiet=True)
    c = torch.load(tmp_path / "c/checkpoints/search.pt", weights_only=True)["model"]
    assert not torch.equal(a["alphas.normal"], c["alphas.normal"])


def test_arch_start_epoch_freezes_architecture(tmp_path):
    search(tiny_config("darts", "search.epochs=2", "search.arch_start_epoch=1"), tmp_path / "w", quiet=True)
    state = torch.load(tmp_path / "w/checkpoints/search.pt", weights_only=True)
    # only epoch 2 moved the architecture: Adam with arch lr 3e-3 took exactly 3 steps
    assert state["arch_optimizer"]["state"][0]["step"] == 3


def test_unrolled_search_runs(tmp_path):
    report = search(tiny_config("darts", "search.epochs=1", "method.unrolled=true"), tmp_path / "u", quiet=True)
    assert report["epochs"] == 1


def test_existing_run_directory_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["search", "darts", "--out", str(out), "--quiet", *sum([["--set", s] for s in TINY], [])]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_killed_and_resumed_search_matches_uninterrupted(tmp_path):
    full, again = kill_and_resume("darts", tmp_path, TINY)
    for kind in ("normal", "reduce"):
        assert torch.equal(full["model"][f"alphas.{kind}"], again["model"][f"alphas.{kind}"])
    assert len((tmp_path / "killed/metrics.csv").read_text().strip().splitlines()) == 5


@pytest.mark.slow  # six runs of the search (one uninterrupted, five restarts): about two minutes on 2 cores
def test_search_killed_five_times_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path):
    overrides = sum([["--set", s] for s in TINY + ["search.epochs=6"]], [])
    hits = kill_five_times(lambda out: [sys.executable, "-m", "hwnas", "search", "darts", "--out", str(out),
                                        "--quiet", *overrides], ["search", "darts"], tmp_path, "search.pt")
    assert hits[0] == "during a checkpoint write", hits
    full = torch.load(tmp_path / "full/checkpoints/search.pt", weights_only=True)
    again = torch.load(tmp_path / "killed/checkpoints/search.pt", weights_only=True)
    for name, value in full["model"].items():
        assert torch.equal(value, again["model"][name]), name
    assert (tmp_path / "full/arch.json").read_text() == (tmp_path / "killed/arch.json").read_text()


def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    assert main(["search", "darts", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    search(tiny_config("darts", "search.epochs=1"), out, quiet=True)
    (out / "checkpoints/search.pt").write_bytes(b"garbage")
    assert main(["search", "darts", "--out", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a loadable hwnas checkpoint" in err and err.count("\n") == 1
