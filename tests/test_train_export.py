"""Final training, verified ONNX export and `hwnas run`."""

import json

import numpy as np
import pytest
import torch

from hwnas.cli import main
from hwnas.config import TrainConfig, load_config
from hwnas.errors import HwnasError
from hwnas.archs.genotype import ZOO
from hwnas.archs.routed import RoutedArch, RoutedBlock

# a small routed network of the shipped 32x32 space (the densenas_32 table has its keys)
SMALL_ROUTED = RoutedArch("densenas_32", (
    RoutedBlock(1, "mbconv_k3_t3"), RoutedBlock(4, "mbconv_k3_t3"), RoutedBlock(7, "mbconv_k3_t3"),
    RoutedBlock(10, "mbconv_k3_t3"), RoutedBlock(13, "mbconv_k3_t3"), RoutedBlock(16, "mbconv_k3_t3"),
))
TABLE_32 = "latency_tables/amd-epyc-2core-ort-1thread/densenas_32.csv"
QUICK = ["train.epochs=2", "train.steps_per_epoch=3", "train.batch_size=16", "data.train_subset=160"]
SMALL_CELLS = ["model.init_channels=4", "model.layers=5"]


def quick_config(recipe: str, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, f"configs/train/{recipe}.yaml", QUICK + list(extra))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hwnas: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def trained_routed(tmp_path_factory):
    from hwnas.train import train

    out = tmp_path_factory.mktemp("routed") / "run"
    report = train(quick_config("densenas_digits"), SMALL_ROUTED, out, quiet=True)
    return out, report


@pytest.mark.parametrize("recipe", ["cifar10", "imagenet_mobile", "densenas_imagenet", "digits", "densenas_digits",
                                    "fashion-mnist"])
def test_every_training_recipe_loads(recipe):
    config = load_config(TrainConfig, f"configs/train/{recipe}.yaml")
    assert config.train.epochs > 0


def test_published_recipes_match_the_reference():
    c10 = load_config(TrainConfig, "configs/train/cifar10.yaml")
    assert (c10.train.epochs, c10.train.batch_size, c10.train.auxiliary_weight, c10.data.augment.cutout,
            c10.train.drop_path_prob, c10.train.grad_clip, c10.model.init_channels, c10.model.layers) == \
        (600, 96, 0.4, 16, 0.2, 5.0, 36, 20)
    mobile = load_config(TrainConfig, "configs/train/imagenet_mobile.yaml")
    assert (mobile.train.label_smoothing, mobile.train.schedule, mobile.train.lr_decay, mobile.train.epochs) == \
        (0.1, "exponential", 0.97, 250)


def test_learning_rate_schedules():
    from hwnas.train import learning_rate

    cosine = load_config(TrainConfig, "configs/train/cifar10.yaml")
    assert learning_rate(cosine, 0) == pytest.approx(0.025) and learning_rate(cosine, 300) == pytest.approx(0.0125)
    decay = load_config(TrainConfig, "configs/train/imagenet_mobile.yaml")
    assert learning_rate(decay, 2) == pytest.approx(0.1 * 0.97 ** 2)
    warm = load_config(TrainConfig, "configs/train/cifar10.yaml", ["train.warmup_epochs=2"])
    assert learning_rate(warm, 0, 0.5) == pytest.approx(0.025 * 0.25)  # a quarter through the warm-up
    assert learning_rate(warm, 1, 1.0) == pytest.approx(learning_rate(cosine, 1))  # the schedule once it ends
    assert learning_rate(warm, 2, 0.5) == learning_rate(cosine, 2)


def test_warmup_longer_than_training_is_refused(tmp_path, capsys):
    assert main(["train", "--arch", "DARTS_V2", "--set", "train.epochs=3", "--set", "train.warmup_epochs=3",
                 "--out", str(tmp_path / "run")]) == 2
    assert "warmup_epochs (3) must be less than train.epochs (3)" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_zero_init_residual_makes_every_residual_mbconv_an_identity_at_start():
    from hwnas.models.routed_net import RoutedNetwork
    from hwnas.ops.mobile import MBConv
    from hwnas.spaces.definition import load_space

    arch = RoutedArch("densenas_32", (RoutedBlock(1, "mbconv_k3_t3", ("mbconv_k5_t6", "mbconv_k3_t3")),
                                      RoutedBlock(4, "mbconv_k3_t6", ("mbconv_k7_t3",)),
                                      *SMALL_ROUTED.blocks[2:]))
    space = load_space("densenas_32")
    identities = []

    def record(op, inputs, output):
        identities.append(torch.equal(output, inputs[0]))

    # the stem's MBConv is not in a routing block; heads change shape; the three stack layers are residual
    for zero_init, expected in ((True, [False, False, True, True, False, True] + [False] * 4), (False, [False] * 10)):
        torch.manual_seed(0)
        net = RoutedNetwork(space, arch, 10, zero_init_residual=zero_init)
        for op in net.modules():
            if isinstance(op, MBConv):
                op.register_forward_hook(record)
        identities.clear()
        net(torch.randn(2, 3, 32, 32))
        assert identities == expected


def test_confusion_matrix_counts():
    from hwnas.train import confusion_matrix

    predicted, labels = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0])
    assert confusion_matrix(predicted, labels, 3) == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]


def test_routed_training_writes_report_weights_and_plots(trained_routed):
    out, report = trained_routed
    matrix = np.array(report["last"]["confusion_matrix"])
    assert matrix.sum() == 360  # the digits test split
    assert report["test_acc"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert report["epochs"] == 2 and report["eval_split"] == "valid" and report["network"] == "RoutedNetwork"
    assert {"training_curves.png", "confusion_matrix.png"} <= set(report["plots"])
    for name in ("weights/last.pt", "weights/best.pt", "checkpoints/train.pt", "metrics.csv", "report.json"):
        assert (out / name).is_file(), name


def test_weights_file_rebuilds_the_trained_network(trained_routed):
    from hwnas.train import build_from_weights, load_weights

    out, _ = trained_routed
    state = load_weights(out / "weights/last.pt")
    model = build_from_weights(state, "last.pt").eval()
    assert RoutedArch.from_dict(state["arch"]) == SMALL_ROUTED
    x = torch.randn(2, 3, 32, 32)
    again = build_from_weights(load_weights(out / "weights/last.pt"), "last.pt").eval()
    assert torch.equal(model(x), again(x))


def test_cell_training_uses_auxiliary_head_and_drop_path(tmp_path, monkeypatch):
    from hwnas.models.cell_net import CellNetwork
    from hwnas.train import train

    seen = []
    forward = CellNetwork.forward

    def spy(self, x):
        out = forward(self, x)
        if self.training:
            seen.append((isinstance(out, tuple), self.drop_path_prob))
        return out

    monkeypatch.setattr(CellNetwork, "forward", spy)
    report = train(quick_config("digits", *SMALL_CELLS), ZOO["DARTS_V2"], tmp_path / "run", quiet=True)
    assert all(aux for aux, _ in seen)  # the auxiliary logits come back in training
    assert sorted({p for _, p in seen}) == [0.0, pytest.approx(0.1 / 2)]  # drop-path grows linearly per epoch
    assert report["params"] < report["macs"]


def test_export_of_a_cell_network_and_an_frc_network(tmp_path):
    from hwnas.export import export

    for name in ("DARTS_V2", "GDAS_F1"):
        report = export(name, tmp_path / f"{name}.onnx", dataset="digits", runs=5)
        assert report["checker"] == "passed" and not report["trained"]
        for check in ("random", "real"):
            assert report["parity"][check]["max_abs_diff"] <= report["parity"][check]["tolerance"] <= 1e-3
            assert report["parity"][check]["top1_agreement"] == 1.0
        assert report["parity"]["real"]["images"] == 64 and report["latency"]["measured_ms"] > 0


def test_export_of_a_trained_routed_network_with_mobile_format_and_table(trained_routed, tmp_path):
    import onnx

    from hwnas.export import export

    out, _ = trained_routed
    report = export(None, tmp_path / "m.onnx", weights=str(out / "weights/last.pt"), table=TABLE_32,
                    formats=["ort"], dynamic_batch=True, runs=5)
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    assert not any(node.op_type == "BatchNormalization" for node in model.graph.node)  # BN folded
    assert report["trained"] and report["parity"]["real"]["top1_agreement"] == 1.0
    assert (tmp_path / "m.ort").is_file() and report["runtimes"]["ort"]["parity"]["random"]["top1_agreement"] == 1.0
    lat = report["latency"]
    assert lat["predicted_ms"] == pytest.approx(sum(lat["breakdown_ms"].values()), rel=0.1)
    assert lat["threads"] == 1 and lat["estimator"] == "p10_ms"


def test_int8_export_reports_accuracy_and_speed(trained_routed, tmp_path):
    from hwnas.export import export

    out, _ = trained_routed
    report = export(None, tmp_path / "m.onnx", weights=str(out / "weights/last.pt"), quantize="int8", runs=5)
    q = report["int8"]
    assert (tmp_path / "m.int8.onnx").is_file() and q["test_images"] == 360 and q["selection_images"] == 479
    assert q["tried"][0]["remedy"] == "per-channel" and q["tried"][0]["calibration_images"] == 256
    within = [t["remedy"] for t in q["tried"] if t["selection_drop"] <= 0.01]  # the default drop, 1 point
    assert q["remedy"] == (within[0] if within else min(q["tried"], key=lambda t: t["selection_drop"])["remedy"])
    assert q["accuracy_drop"] == pytest.approx(q["fp32_acc"] - q["int8_acc"]) and q["speedup"] > 0


def test_export_fails_and_leaves_nothing_when_outputs_disagree(tmp_path, monkeypatch):
    from hwnas import export as export_module
    from hwnas.runtimes import parity

    real = parity.torch_outputs
    monkeypatch.setattr(parity, "torch_outputs", lambda model, x: real(model, x) + 0.01)
    with pytest.raises(parity.ParityError, match="ONNX Runtime on random inputs disagrees with PyTorch"):
        export_module.export("DARTS_V2", tmp_path / "m.onnx", dataset="digits", formats=["ort"], runs=5)
    assert list(tmp_path.iterdir()) == []


def test_table_of_another_network_is_refused(tmp_path):
    from hwnas.export import export

    with pytest.raises(HwnasError, match="describes cell networks with C=36"):
        export("DARTS_V2", tmp_path / "m.onnx", dataset="digits",
               table="latency_tables/amd-epyc-2core-ort-1thread/darts_cifar10.csv")


# ---- bad input: one line, exit code 2, nothing overwritten ----

def test_train_unknown_architecture(tmp_path, capsys):
    assert main(["train", "--arch", "NoSuchNet", "--out", str(tmp_path / "run")]) == 2
    assert "unknown architecture 'NoSuchNet'" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_train_bad_config_key(tmp_path, capsys):
    assert main(["train", "--arch", "DARTS_V2", "--set", "train.epochz=3", "--out", str(tmp_path / "run")]) == 2
    assert "train.epochz: unknown key" in one_line_error(capsys)


def test_export_missing_checkpoint(tmp_path, capsys):
    assert main(["export", "--weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "checkpoint not found" in one_line_error(capsys)


def test_export_checkpoint_of_another_architecture(trained_routed, tmp_path, capsys):
    out, _ = trained_routed
    args = ["export", "--arch", "DenseNAS-C", "--weights", str(out / "weights/last.pt"), "--out", str(tmp_path / "m.onnx")]
    assert main(args) == 2
    assert "holds weights of another architecture" in one_line_error(capsys)
    assert not (tmp_path / "m.onnx").exists()


def test_export_training_checkpoint_is_not_a_weights_file(trained_routed, tmp_path, capsys):
    out, _ = trained_routed
    assert main(["export", "--weights", str(out / "checkpoints/train.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not an hwnas weights file" in one_line_error(capsys)


def test_export_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export", "--arch", "DARTS_V2", "--dataset", "digits", "--out", str(blocker / "m.onnx")]) == 2
    assert "cannot write" in one_line_error(capsys)


def test_export_does_not_overwrite(tmp_path, capsys):
    existing = tmp_path / "m.onnx"
    existing.write_text("mine")
    assert main(["export", "--arch", "DARTS_V2", "--dataset", "digits", "--out", str(existing)]) == 2
    assert "already exists" in one_line_error(capsys) and existing.read_text() == "mine"


def test_export_unknown_architecture(tmp_path, capsys):
    assert main(["export", "--arch", "NoSuchNet", "--dataset", "digits", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "unknown architecture" in one_line_error(capsys)


def test_run_missing_config(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "config file not found" in one_line_error(capsys)


def test_run_bad_budget(tmp_path, capsys):
    assert main(["run", "--set", "budget_ms=-1", "--out", str(tmp_path / "run")]) == 2
    assert "budget_ms" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_run_refuses_a_used_folder(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert main(["run", "--out", str(tmp_path / "run")]) == 2
    assert "already holds files" in one_line_error(capsys)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


# ---- the main job ----

def test_run_end_to_end_on_a_tiny_budget_search(tmp_path):
    """The whole job with tiny stages: search under a budget, train, export with .ort, report, plots."""
    budget = 0.35
    args = ["run", "--out", str(tmp_path / "run"), "--json", "--quiet", "--set", f"budget_ms={budget}",
            "--set", "search.set=[search.epochs=2,search.arch_start_epoch=1,search.steps_per_epoch=1,search.batch_size=8,"
            "data.train_subset=120]",
            "--set", "train.set=[train.epochs=1,train.warmup_epochs=0,train.steps_per_epoch=2,train.batch_size=16]"]
    assert main(args) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["predicted_ms"] <= budget and report["within_budget_by_table"]
    assert report["budget_met"] == (0.9 * budget <= report["measured_ms"] <= 1.05 * budget)
    assert report["budget"] in ("met", "under", "over") and report["table"]["decision"]
    for key in ("onnx", "ort", "weights"):
        assert (tmp_path / "run").joinpath(report["files"][key]).is_file() or \
            (tmp_path / "run" / report["files"][key]).is_file()
    for plot in report["plots"]:
        assert plot.endswith(".png") and (tmp_path / "run").joinpath(plot).exists()
    assert report["parity"]["real"]["top1_agreement"] == 1.0


def test_killed_and_resumed_training_matches_uninterrupted(tmp_path):
    """A real subprocess, a real SIGKILL after the first epoch's checkpoint, `--resume`: the same weights."""
    from killresume import kill_and_resume_training

    full, again = kill_and_resume_training("GDAS_F1", tmp_path, QUICK[1:] + SMALL_CELLS)
    assert full["epoch"] == again["epoch"] == 3
    for name, value in full["state_dict"].items():
        assert torch.equal(value, again["state_dict"][name]), name


def test_a_file_timed_again_keeps_the_quicker_timing_and_its_error():
    import time as clock

    from hwnas.export import timed_again

    class Sleeper:  # a runtime whose file takes about 2 ms a call
        def load(self, path, threads):
            return self

        def bound(self, x):
            return lambda: clock.sleep(0.002)

    settings = {"threads": 1, "warmup": 1, "runs": 5, "estimator": "p10_ms", "batch": 1}
    slow = timed_again(Sleeper(), "f.onnx", {**settings, "measured_ms": 50.0, "predicted_ms": 2.0}, (1, 3, 8, 8))
    assert slow["timings_ms"][0] == 50.0 and 2.0 <= slow["measured_ms"] == slow["timings_ms"][1] < 10.0
    assert slow["error_pct"] == pytest.approx(100 * (2.0 / slow["measured_ms"] - 1))
    quick = timed_again(Sleeper(), "f.onnx", {**settings, "measured_ms": 0.5}, (1, 3, 8, 8))
    assert quick["measured_ms"] == 0.5 and quick["timings_ms"][1] >= 2.0 and "error_pct" not in quick
