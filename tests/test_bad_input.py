"""Every file or value a user hands hwnas, broken in each way a user has broken it, through the CLI.

Each case must end with exit code 2 and one line on stderr (`hwnas: error: ...`) that names the problem
(the fragment checked here) and says what to do, with no traceback, and must leave every file that was
there before byte for byte as it was, creating no run directory or output.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from hwnas.cli import main

TABLE_32 = Path("latency_tables/amd-epyc-2core-ort-1thread/densenas_32.csv")
SMALL_ROUTED = {"space": "densenas_32", "blocks": [
    {"block": b, "head": "mbconv_k3_t3", "stack": []} for b in (1, 4, 7, 10, 13, 16)]}
QUICK_TRAIN = ["--set", "train.epochs=1", "--set", "train.steps_per_epoch=1"]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def darts_config(tmp: Path, change: str) -> str:
    """The quick DARTS recipe with one line changed (or appended)."""
    text = Path("configs/search/darts_digits.yaml").read_text()
    return str(write(tmp / "recipe.yaml", text.replace("  epochs: 6\n", change) if change.startswith("  ")
                     else text + change))


def genotype(tmp: Path, **change) -> str:
    from hwnas.archs.genotype import ZOO

    data = {**ZOO["DARTS_V2"].to_dict(), **change}
    return str(write(tmp / "arch.json", json.dumps(data)))


def routed(tmp: Path, blocks) -> str:
    return str(write(tmp / "arch.json", json.dumps({"space": "densenas_32", "blocks": blocks})))


def corrupt_table(tmp: Path, corrupt: Callable[[pd.DataFrame], pd.DataFrame]) -> str:
    csv = tmp / "table.csv"
    shutil.copy(TABLE_32, csv)
    shutil.copy(TABLE_32.with_suffix(".json"), csv.with_suffix(".json"))
    corrupt(pd.read_csv(csv)).to_csv(csv, index=False)
    return str(csv)


def idx_file(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    write(path, header + array.astype(np.uint8).tobytes())


def fashion_mnist(tmp: Path, truncate: bool) -> str:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 5)):
        idx_file(tmp / "fm" / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        idx_file(tmp / "fm" / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    if truncate:
        images = tmp / "fm/train-images-idx3-ubyte"
        images.write_bytes(images.read_bytes()[:1000])
    return str(tmp / "fm")


def weights(tmp: Path, arch: str = "DARTS_V2", mangle: Callable[[bytes], bytes] | None = None) -> str:
    """A real weights file of a small cell network (as `hwnas train` writes them), optionally mangled."""
    from hwnas.config import ModelConfig
    from hwnas.archs.genotype import ZOO
    from hwnas.kinds import build_model
    from hwnas.runs import save_checkpoint
    from hwnas.train import weights_file

    model_cfg = ModelConfig(init_channels=8, layers=5, auxiliary=False)
    model = build_model(ZOO[arch], model_cfg, 10, 1)
    path = tmp / "weights.pt"
    save_checkpoint(path, weights_file(ZOO[arch].to_dict(), model_cfg, 10, 1, 32, "digits", 1, model))
    if mangle:
        path.write_bytes(mangle(path.read_bytes()))
    return str(path)


class RunsCode:
    """A pickle that would run a shell command when loaded without weights_only."""

    def __reduce__(self):
        return os.system, ("touch PWNED",)


def malicious_checkpoint(tmp: Path) -> str:
    buffer = io.BytesIO()
    torch.save({"format": "hwnas-weights/1", "payload": RunsCode()}, buffer)
    return str(write(tmp / "weights.pt", buffer.getvalue()))


def interrupted_search(tmp: Path) -> str:
    """A real one-step search run whose checkpoint was then cut short (a disk that filled up, say)."""
    run = tmp / "run"
    assert main(["search", "darts", "--out", str(run), "--quiet", "--set", "search.epochs=1", "--set", "search.batch_size=16", "--set",
                 "search.steps_per_epoch=1", "--set", "data.train_subset=200"]) == 0
    checkpoint = run / "checkpoints/search.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    return str(run)


def image_folder(tmp: Path, splits: dict[str, dict[str, int]], broken: str | None = None) -> str:
    """An ImageFolder tree ({split: {class: images}}); `broken` names an image to truncate."""
    from PIL import Image

    for split, classes in splits.items():
        for cls, count in classes.items():
            (tmp / "images" / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 30), (i * 100, 50, 20)).save(tmp / "images" / split / cls / f"{i}.png")
    if broken:
        (tmp / "images" / broken).write_bytes((tmp / "images" / broken).read_bytes()[:40])
    return str(tmp / "images")


def image_folder_train(tmp: Path, splits: dict[str, dict[str, int]], broken: str | None = None) -> list[str]:
    return ["train", "--arch", "DARTS_V2", "--set", "data.dataset=imagenet", "--set", "data.image_size=32",
            "--set", f"data.root={image_folder(tmp, splits, broken)}"]


def resumed_with_edited_config(tmp: Path) -> str:
    """A started search whose config.yaml was then edited by hand into invalid YAML."""
    run = interrupted_search(tmp)
    config = Path(run) / "config.yaml"
    config.write_text(config.read_text() + "search: [epochs\n")
    return run


def search_args(config: str, *extra: str) -> list[str]:
    return ["search", "darts", "--config", config, *extra]


# (case id, argv builder given the tmp folder, fragment of the one-line message)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # configs
    ("config-unknown-key", lambda t: search_args(darts_config(t, "  epochz: 6\n")), "search.epochz: unknown key"),
    ("config-wrong-type", lambda t: search_args(darts_config(t, "  epochs: six\n")), "search.epochs"),
    ("config-negative-epochs", lambda t: search_args(darts_config(t, "  epochs: -3\n")), "search.epochs"),
    ("config-out-is-a-file", lambda t: ["train", "--arch", "DARTS_V2", "--out", str(write(t / "f", "mine\n"))],
     "is a file; a run's --out is a folder"),
    ("config-missing-file", lambda t: search_args(str(t / "absent.yaml")), "absent.yaml"),
    ("config-not-yaml", lambda t: search_args(str(write(t / "r.yaml", "method: [darts\n"))), "r.yaml"),
    ("config-bad-override", lambda t: ["search", "darts", "--set", "search.batch_size=0"], "search.batch_size"),
    # sizes no network has: refused by key, not by the allocator
    ("config-absurd-supernet-width", lambda t: ["search", "darts", "--set", "method.supernet.init_channels=1000000"],
     "method.supernet.init_channels: Input should be less than or equal to 16384"),
    # sizes a network may have, but not on this machine: refused before the allocator is asked (its answer
    # is the operating system killing the process, leaving a half-made run folder)
    ("config-supernet-larger-than-memory", lambda t: ["search", "darts", "--set", "method.supernet.init_channels=16384"],
     "training the supernet on batches of 64 would need about"),
    ("config-network-larger-than-memory", lambda t: ["train", "--arch", "DARTS_V2", "--set", "model.init_channels=16384"],
     "training this network on batches of 64 would need about"),
    ("config-absurd-classes-flag", lambda t: ["info", "--arch", "DARTS_V2", "--num-classes", "1000000000000"],
     "--num-classes: must lie in 1..100000"),
    ("config-absurd-classes-in-a-space", lambda t: ["search", "densenas", "--set", "method.space=" + str(write(
        t / "s.yaml", "name: s\nderive: {from: densenas_32_small, num_classes: 1000000000000}\n"))],
     "num_classes: Input should be less than or equal to 100000"),
    # datasets
    ("dataset-missing-folder", lambda t: ["train", "--arch", "DARTS_V2", "--set", "data.dataset=cifar10",
                                          "--set", f"data.root={t / 'nowhere'}"], "nowhere"),
    ("dataset-wrong-format", lambda t: ["train", "--arch", "DARTS_V2", "--set", "data.dataset=cifar10", "--set",
                                        f"data.root={write(t / 'c/cifar-10-batches-py/data_batch_1', 'x').parent.parent}"],
     "cifar"),
    ("dataset-truncated-file", lambda t: ["train", "--arch", "DARTS_V2", "--set", "data.dataset=fashion-mnist",
                                          "--set", f"data.root={fashion_mnist(t, truncate=True)}"],
     "train-images-idx3-ubyte"),
    ("dataset-image-folder-one-class", lambda t: image_folder_train(t, {"train": {"cat": 2}, "val": {"cat": 1}}),
     "1 class folder"),
    ("dataset-image-folder-other-val-classes", lambda t: image_folder_train(
        t, {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "cow": 1}}), "missing in val: ['dog']"),
    ("dataset-image-folder-broken-image", lambda t: image_folder_train(
        t, {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 1}}, broken="train/dog/0.png"), "dog/0.png cannot be read"),
    # latency tables and kits
    ("table-missing-column", lambda t: ["lut", "predict", "--table", corrupt_table(t, lambda d: d.drop(columns=["cv"])),
                                        "--arch", routed(t, SMALL_ROUTED["blocks"])], "missing column"),
    ("table-duplicate-key", lambda t: ["lut", "predict", "--table", corrupt_table(t, lambda d: pd.concat([d, d.iloc[:1]])),
                                       "--arch", routed(t, SMALL_ROUTED["blocks"])], "more than once"),
    ("table-nan-latency", lambda t: ["lut", "predict", "--table", corrupt_table(t, lambda d: d.assign(p10_ms=float("nan"))),
                                     "--arch", routed(t, SMALL_ROUTED["blocks"])], "not a number"),
    ("table-negative-latency", lambda t: ["lut", "predict", "--table",
                                          corrupt_table(t, lambda d: d.assign(median_ms=-d.median_ms)),
                                          "--arch", routed(t, SMALL_ROUTED["blocks"])], "must be positive"),
    ("table-zero-latency", lambda t: ["lut", "predict", "--table", corrupt_table(t, lambda d: d.assign(p10_ms=0.0)),
                                      "--arch", routed(t, SMALL_ROUTED["blocks"])], "must be positive"),
    ("table-another-space", lambda t: ["lut", "predict", "--table", str(TABLE_32), "--arch", "DenseNAS-C"],
     "densenas_224"),
    ("table-missing-file", lambda t: ["search", "densenas", "--table", str(t / "absent.csv")], "absent.csv"),
    # architectures
    ("arch-unknown-op", lambda t: ["info", "--arch", genotype(t, normal=[["sep_conv_9x9", 0]] + [["skip_connect", 1]] * 7),
                                   "--dataset", "cifar10"], "sep_conv_9x9"),
    ("arch-input-out-of-range", lambda t: ["info", "--arch", genotype(t, normal=[["skip_connect", 5]] * 8),
                                           "--dataset", "cifar10"], "input"),
    ("arch-wrong-edge-count", lambda t: ["info", "--arch", genotype(t, normal=[["skip_connect", 0]] * 7),
                                         "--dataset", "cifar10"], "two (op, input) pairs per node"),
    ("arch-broken-route", lambda t: ["info", "--arch", routed(t, [{"block": 1, "head": "mbconv_k3_t3", "stack": []},
                                                                  {"block": 16, "head": "mbconv_k3_t3", "stack": []}]),
                                     "--dataset", "cifar10"], "no connection from block 1 to block 16"),
    ("arch-unknown-name", lambda t: ["info", "--arch", "DARTS_V9", "--dataset", "cifar10"], "DARTS_V9"),
    ("arch-unknown-name-lists-every-kind", lambda t: ["info", "--arch", "DARTS_V9"], "GDAS_F1, DenseNAS-C)"),
    ("arch-folder", lambda t: ["info", "--arch", str(t)], "is a folder"),
    ("arch-not-utf8", lambda t: ["info", "--arch", str(write(t / "a.json", '{"normal": "caf\xe9"}'.encode("latin-1")))],
     "not UTF-8"),
    # checkpoints
    ("checkpoint-truncated", lambda t: ["export", "--weights", weights(t, mangle=lambda b: b[: len(b) // 2]),
                                        "--out", str(t / "m.onnx")], "not a loadable hwnas checkpoint"),
    ("checkpoint-another-arch", lambda t: ["export", "--weights", weights(t), "--arch", "PC_DARTS_cifar",
                                           "--out", str(t / "m.onnx")], "PC_DARTS_cifar"),
    ("checkpoint-runs-code", lambda t: ["export", "--weights", malicious_checkpoint(t), "--out", str(t / "m.onnx")],
     "refused, it holds Python objects besides tensors and plain data"),
    ("checkpoint-truncated-on-resume", lambda t: ["search", "darts", "--out", interrupted_search(t), "--resume"],
     "not a loadable hwnas checkpoint"),
    ("config-hand-edited-before-resume", lambda t: ["search", "darts", "--out", resumed_with_edited_config(t), "--resume"],
     "config.yaml: not valid YAML"),
    # budgets
    ("budget-zero", lambda t: ["search", "densenas", "--budget-ms", "0"], "--budget-ms"),
    ("budget-negative", lambda t: ["search", "densenas", "--budget-ms", "-2"], "--budget-ms"),
    ("budget-infeasible", lambda t: ["search", "densenas", "--budget-ms", "0.1"],
     "below the smallest latency any densenas_32_small network has with this table (0.136 ms)"),
    ("budget-not-a-number", lambda t: ["search", "densenas", "--budget-ms", "fast"], "--budget-ms"),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case, build, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, build, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)  # configs/ and latency_tables/ relative to the repository
    argv = build(tmp_path)
    out = tmp_path / "out"
    if "--out" not in argv and argv[0] in ("search", "train"):
        argv += ["--out", str(out)]
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own checks (a value of the wrong kind) exit from parse_args
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("hwnas: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err
    assert snapshot(tmp_path) == before, "a file was changed or created"
    assert not Path("PWNED").exists()


def test_the_catalogue_covers_every_kind_of_input():
    kinds = {case.split("-")[0] for case, _, _ in CASES}
    assert kinds == {"config", "dataset", "table", "arch", "checkpoint", "budget"} and len(CASES) >= 20


@pytest.mark.parametrize("raised, code, fragment", [
    (ValueError("something hwnas did not expect"), 1, "a bug in hwnas"),
    (FileNotFoundError(2, "No such file or directory", "missing.yaml"), 2, "missing.yaml: No such file"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1e15 bytes"), 2, "not enough memory"),
    (b"\xff".decode, 2, "not UTF-8"),
])
def test_an_unexpected_exception_is_one_line_without_a_traceback(raised, code, fragment, capsys, monkeypatch):
    import hwnas.cli as cli

    def fail(args):
        if callable(raised):
            raised()
        raise raised

    monkeypatch.setattr(cli, "_info", fail)
    assert main(["info", "--arch", "DARTS_V2"]) == code
    err = capsys.readouterr().err
    assert err.startswith("hwnas: error: ") and err.count("\n") == 1 and "Traceback" not in err and fragment in err, err
    with pytest.raises(type(raised) if not callable(raised) else UnicodeDecodeError):
        main(["--debug", "info", "--arch", "DARTS_V2"])  # --debug shows the real exception


def _one_line_error(capsys, fragment: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("hwnas: error: ") and err.count("\n") == 1 and fragment in err, err


def test_a_key_given_twice_in_a_yaml_file_is_refused(tmp_path, capsys):
    recipe = write(tmp_path / "recipe.yaml", Path("configs/search/darts_digits.yaml").read_text() + "seed: 3\nseed: 4\n")
    assert main(["search", "darts", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "key 'seed' is given twice")
    assert not (tmp_path / "run").exists()


def test_a_folder_or_a_non_utf8_file_as_config(tmp_path, capsys):
    assert main(["search", "darts", "--config", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "is a folder")
    latin = write(tmp_path / "latin.yaml", "# caf\xe9\nseed: 1\n".encode("latin-1"))
    assert main(["search", "darts", "--config", str(latin), "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "not UTF-8")


def test_an_infinite_budget_through_set_is_refused(tmp_path, capsys):
    assert main(["search", "densenas", "--set", "method.budget_ms=.inf", "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "budget_ms")
    assert not (tmp_path / "run").exists()


def test_validate_refuses_an_existing_plot_before_measuring(tmp_path, capsys):
    plot = write(tmp_path / "mine.png", b"not yours to overwrite")
    assert main(["lut", "validate", "--table", str(TABLE_32), "--space", "densenas_32", "--plot", str(plot)]) == 2
    _one_line_error(capsys, "never overwritten")
    assert plot.read_bytes() == b"not yours to overwrite"
    assert main(["lut", "validate", "--table", str(TABLE_32), "--space", "densenas_32", "--plot", str(TABLE_32)]) == 2
    _one_line_error(capsys, ".png")


def test_a_run_that_fails_at_set_up_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    # batch larger than the architecture split: found when the search starts, after the folder was made
    assert main(["search", "densenas", "--set", "search.batch_size=4096", "--out", str(out)]) == 2
    _one_line_error(capsys, "batch size")
    assert not out.exists()
    out.mkdir()  # an empty folder the user made stays
    assert main(["search", "densenas", "--set", "search.batch_size=4096", "--out", str(out)]) == 2
    capsys.readouterr()
    assert out.is_dir() and not any(out.iterdir())


def test_a_warning_waits_for_the_work_and_never_precedes_the_error_line(tmp_path):
    """A table of another CPU warns when it is read. A command refused after that prints its error line
    alone; a command that succeeds still shows the warning. (In a process of its own: pytest's log
    capture replaces the CLI's handler in-process.)"""
    import subprocess
    import sys

    table = tmp_path / "t.csv"
    shutil.copy(TABLE_32, table)
    meta = json.loads(TABLE_32.with_suffix(".json").read_text())
    meta["device"]["cpu_model"] = "Imaginary ARM Cortex-Z9"
    table.with_suffix(".json").write_text(json.dumps(meta))

    def hwnas(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hwnas", *argv], capture_output=True, text=True,
                              cwd=Path(__file__).parent.parent)

    refused = hwnas("lut", "predict", "--table", str(table), "--arch", "DenseNAS-C")  # a 224 network
    assert refused.returncode == 2
    assert refused.stderr.startswith("hwnas: error: ") and refused.stderr.count("\n") == 1, refused.stderr
    verbose = hwnas("-v", "lut", "predict", "--table", str(table), "--arch", "DenseNAS-C")
    assert "Imaginary ARM Cortex-Z9" in verbose.stderr and verbose.returncode == 2
    done = hwnas("baseline", "hand", "--space", "densenas_32", "--table", str(table), "--target-ms", "4",
                 "--out", str(tmp_path / "a.json"))
    assert done.returncode == 0 and "Imaginary ARM Cortex-Z9" in done.stderr, done.stderr


def test_the_memory_a_training_holds_is_counted_from_a_forward_pass_on_the_meta_device(monkeypatch):
    from torch import nn

    from hwnas import memory
    from hwnas.errors import HwnasError

    def build():
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())

    # 20 weights held four times (weight, gradient, two optimizer states) and two layer outputs of 4x2x5x5
    assert memory.training_bytes(build, (4, 1, 5, 5)) == 4 * (4 * 20 + 2 * 200)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1500)
    with pytest.raises(HwnasError, match=r"on batches of 4 would need about .* GiB, more than the .* GiB free on cpu; lower x$"):
        memory.require_memory(build, (4, 1, 5, 5), "cpu", "it", "x")
    memory.require_memory(build, (2, 1, 5, 5), "cpu", "it", "x")  # 1120 bytes fit
