"""The final training every derived network runs on, driving the shared training engine (`hwnas/engine.py`): cell genotypes (with the auxiliary head and
drop-path of the DARTS recipes), GDAS fixed-reduction-cell networks and routed DenseNAS networks.

SGD with a cosine or exponential schedule, label smoothing, gradient clipping; an evaluation each
epoch (on a held-out share of the training set, or on the test set as the releases do); an atomic
checkpoint each epoch that `resume` continues from bit for bit on the CPU; `weights/last.pt` and
`weights/best.pt`; at the end the test accuracy and confusion matrix of both in `report.json`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwnas import distributed
from hwnas.config import ModelConfig, TrainConfig, config_to_dict
from hwnas.data import BatchStream, Dataset, Source, iterate_once, load_dataset, split_indices, subset_indices
from hwnas.engine import Engine, RunningMean, Value, cosine_lr, seed_of
from hwnas.errors import CheckpointError, HwnasError
from hwnas.limits import MAX_CHANNELS, MAX_CLASSES, MAX_SIDE
from hwnas.memory import require_memory
from hwnas.kinds import arch_from_dict, build_model
from hwnas.models import count_macs, count_parameters
from hwnas.runs import RunDir, load_checkpoint, save_checkpoint, write_json

log = logging.getLogger("hwnas.train")

WEIGHTS_FORMAT = "hwnas-weights/1"


def learning_rate(config: TrainConfig, epoch: int, progress: float = 0.0) -> float:
    """The epoch's rate from the schedule; during the first `warmup_epochs` it ramps up linearly with
    `progress` (0..1 through the epoch), as large-batch recipes do to keep deep networks from diverging."""
    recipe = config.train
    opt = recipe.optimizer
    if recipe.schedule == "exponential":
        lr = opt.lr * recipe.lr_decay ** epoch
    else:
        lr = cosine_lr(epoch, recipe.epochs, opt.lr, opt.lr_min)
    if epoch < recipe.warmup_epochs:
        lr *= (epoch + progress) / recipe.warmup_epochs
    return lr


@torch.no_grad()
def predictions(model: nn.Module, source: Source, indices: torch.Tensor | None, batch_size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Predicted classes, true classes and the mean cross-entropy over `indices` (all when None), eval mode."""
    model.eval()
    predicted, labels, loss = [], [], RunningMean()
    for x, y in iterate_once(source, indices, batch_size):
        logits = model(x.to(device))
        loss.add(nn.functional.cross_entropy(logits, y.to(device)).item(), len(y))
        predicted.append(logits.argmax(dim=1).cpu())
        labels.append(y)
    return torch.cat(predicted), torch.cat(labels), loss.value


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[list[int]]:
    """Rows: true class; columns: predicted class."""
    counts = torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).tolist()


def weights_file(arch_json: dict[str, Any], model_cfg: ModelConfig, num_classes: int, in_channels: int,
                 image_size: int, dataset: str, epoch: int, model: nn.Module) -> dict[str, Any]:
    """What `hwnas export` needs to rebuild the network: the architecture, its settings and the weights."""
    return {"format": WEIGHTS_FORMAT, "arch": arch_json, "model": config_to_dict(model_cfg),
            "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size, "dataset": dataset,
            "epoch": epoch, "state_dict": model.state_dict()}


# what a weights file holds besides its format, and of which type
WEIGHTS_FIELDS = {"arch": dict, "model": dict, "num_classes": int, "in_channels": int, "image_size": int,
                  "dataset": str, "epoch": int, "state_dict": dict}


def load_weights(path: str | Path) -> dict[str, Any]:
    """A weights file written by `hwnas train`, checked entry by entry: a damaged or hand-made one is
    refused here, in one line, not half way through an export."""
    from pydantic import ValidationError

    from hwnas.config import DataConfig, format_validation_error

    state = load_checkpoint(Path(path))
    if not isinstance(state, dict) or state.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path}: not an hwnas weights file (written by `hwnas train` under weights/); "
                              "a training checkpoint is checkpoints/train.pt, its weights are weights/last.pt")

    def damaged(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: a damaged weights file ({what}); use the file `hwnas train` wrote")

    for key, kind in WEIGHTS_FIELDS.items():
        value = state.get(key)
        if key not in state:
            raise damaged(f"no `{key}`")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise damaged(f"`{key}` is a {type(value).__name__}, not a {kind.__name__}")
    for key, most in (("num_classes", MAX_CLASSES), ("in_channels", MAX_CHANNELS), ("image_size", MAX_SIDE)):
        if not 0 < state[key] <= most:
            raise damaged(f"`{key}` is {state[key]}")
    if state["dataset"] not in DataConfig.model_fields["dataset"].annotation.__args__:
        raise damaged(f"unknown dataset {state['dataset']!r}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["state_dict"].items()):
        raise damaged("`state_dict` holds something other than named tensors")
    try:
        arch_from_dict(state["arch"])
        ModelConfig.model_validate(state["model"])
    except HwnasError as exc:
        raise damaged(str(exc)) from None
    except ValidationError as exc:
        raise damaged(f"model: {format_validation_error(exc)}") from None
    return state


def build_from_weights(state: dict[str, Any], source: str) -> nn.Module:
    """The network a weights file describes, with its weights loaded."""
    model = build_model(arch_from_dict(state["arch"]), ModelConfig.model_validate(state["model"]),
                        state["num_classes"], state["in_channels"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit the architecture it names "
                              f"({str(exc).splitlines()[0][:160]})") from None
    return model


def arch_text(arch) -> str:
    """A routed architecture block by block (the DenseNAS release's format), a genotype as it prints."""
    from hwnas.kinds import kind_of

    return kind_of(arch).text(arch)


class Trainer:
    """The final training on the shared engine: SGD on the whole training share, one evaluation per epoch.
    `model` replaces the network `arch` builds (quantization-aware fine-tuning trains a prepared one)."""

    def __init__(self, config: TrainConfig, arch, run: RunDir, quiet: bool = False, dataset: Dataset | None = None,
                 model: nn.Module | None = None):
        self.config, self.arch, self.run = config, arch, run
        recipe = config.train
        self.engine = Engine(run, config.device, recipe.channels_last, quiet)
        self.device = self.engine.device
        self.dataset = dataset or load_dataset(config.data)
        n = len(self.dataset.train)
        if recipe.valid_portion > 0:
            self.train_idx, self.eval_idx = split_indices(n, 1 - recipe.valid_portion, config.data.train_subset)
            self.eval_source, self.eval_name = self.dataset.train, "valid"
        else:
            self.train_idx = subset_indices(n, config.data.train_subset).sort().values
            self.eval_source, self.eval_idx, self.eval_name = self.dataset.test, None, "test"
        torch.manual_seed(seed_of(config.seed, "train", "init"))
        if model is None:
            model = build_model(arch, config.model, self.dataset.num_classes, self.dataset.channels)
        self.model = model
        self.model.to(self.device, memory_format=self.engine.memory_format)
        if recipe.sync_bn:
            self.model = distributed.use_global_batch_norm(self.model)
        # under torchrun the training steps go through DistributedDataParallel (rank 0's initial weights,
        # gradients averaged in buckets during backward); everything else uses the plain network
        self.forward = self.model
        if distributed.active():
            self.forward = nn.parallel.DistributedDataParallel(self.model, device_ids=None)
        opt = recipe.optimizer
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=opt.lr, momentum=opt.momentum,
                                         weight_decay=opt.weight_decay, nesterov=opt.nesterov)
        self.stream = BatchStream(self.dataset.train, self.train_idx, recipe.batch_size,
                                  seed_of(config.seed, "train", "batches"), config.data.augment,
                                  distributed.rank(), distributed.world_size())
        self.criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        self.best_acc = Value(-1.0)
        self.steps = self.stream.batches_per_pass
        if recipe.steps_per_epoch:
            self.steps = min(self.steps, recipe.steps_per_epoch)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.engine.history

    def fit(self) -> None:
        parts = {"model": self.model, "optimizer": self.optimizer, "stream": self.stream, "best_acc": self.best_acc}
        start = self.engine.restore("train", parts, "training")
        if start == 0:
            log.info("training %s: %d parameters, %d steps/epoch of %d images", type(self.model).__name__,
                     count_parameters(self.model), self.steps, self.config.train.batch_size)
        self.engine.fit("train", start, self.config.train.epochs, parts, self._epoch, self._summary)

    def _epoch(self, epoch: int) -> dict[str, Any]:
        recipe = self.config.train
        if hasattr(self.model, "drop_path_prob"):
            self.model.drop_path_prob = recipe.drop_path_prob * epoch / recipe.epochs
        train_loss, train_acc = self._steps(epoch)
        train_loss, train_acc = distributed.mean_over_ranks([train_loss, train_acc], self.device)
        distributed.sync_module(self.model)  # rank 0's BN statistics everywhere before evaluating and saving
        predicted, labels, eval_loss = predictions(self.model, self.eval_source, self.eval_idx,
                                                   recipe.batch_size, self.device)
        eval_acc = (predicted == labels).float().mean().item()
        self._keep_weights(epoch + 1, eval_acc)
        return {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                "train_acc": train_acc, f"{self.eval_name}_loss": eval_loss, f"{self.eval_name}_acc": eval_acc}

    def _summary(self, row: dict[str, Any]) -> str:
        name = self.eval_name
        return (f"epoch {row['epoch']}/{self.config.train.epochs}  lr {row['lr']:.4g}  train loss "
                f"{row['train_loss']:.3f} acc {row['train_acc']:.3f}  {name} loss {row[name + '_loss']:.3f} "
                f"acc {row[name + '_acc']:.3f}  ({row['seconds']:.1f}s)")

    def _steps(self, epoch: int) -> tuple[float, float]:
        recipe = self.config.train
        self.model.train()
        loss_mean, acc_mean = RunningMean(), RunningMean()
        bar = self.engine.progress(self.steps, f"train {epoch + 1}/{recipe.epochs}")
        for step in bar:
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.config, epoch, (step + 1) / self.steps)
            x, y = self.engine.to_device(next(self.stream))
            self.optimizer.zero_grad(set_to_none=True)
            out = self.forward(x)
            logits, aux = out if isinstance(out, tuple) else (out, None)
            loss = self.criterion(logits, y)
            if aux is not None:
                loss = loss + recipe.auxiliary_weight * self.criterion(aux, y)
            loss.backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), recipe.grad_clip)
            self.optimizer.step()
            loss_mean.add(loss.item(), len(y))
            acc_mean.add((logits.argmax(dim=1) == y).float().mean().item(), len(y))
            bar.set_postfix(loss=f"{loss.item():.3f}")
        return loss_mean.value, acc_mean.value

    def weights(self, epoch: int) -> dict[str, Any]:
        data = self.config.data
        return weights_file(self.arch.to_dict(), self.config.model, self.dataset.num_classes, self.dataset.channels,
                            self.dataset.image_size, data.dataset, epoch, self.model)

    def _keep_weights(self, epochs_done: int, eval_acc: float) -> None:
        """`weights/best.pt` when this epoch evaluated best so far, and `weights/last.pt`, before the engine's
        checkpoint: a kill between the writes leaves a checkpoint that re-does this epoch."""
        if not distributed.is_main():
            return
        if eval_acc > self.best_acc.value:
            self.best_acc.value = eval_acc
            save_checkpoint(self.run.file("weights/best.pt"), self.weights(epochs_done))
        save_checkpoint(self.run.file("weights/last.pt"), self.weights(epochs_done))

    def test(self, weights: str) -> dict[str, Any]:
        """Test accuracy and confusion matrix of the weights saved as `weights` (last or best)."""
        state = load_weights(self.run.file(f"weights/{weights}.pt"))
        self.model.load_state_dict(state["state_dict"])
        predicted, labels, loss = predictions(self.model, self.dataset.test, None, self.config.train.batch_size,
                                              self.device)
        return {"epoch": state["epoch"], "test_acc": (predicted == labels).float().mean().item(), "test_loss": loss,
                "confusion_matrix": confusion_matrix(predicted, labels, self.dataset.num_classes)}


def train(config: TrainConfig, arch, out: str | Path, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train the final network of `arch`; returns the report (also written to `report.json`)."""
    started = time.perf_counter()
    dataset = load_dataset(config.data)  # a missing or broken dataset stops here, before the run directory exists
    require_memory(lambda: build_model(arch, config.model, dataset.num_classes, dataset.channels),
                   (config.train.batch_size, dataset.channels, dataset.image_size, dataset.image_size), config.device,
                   "this network", "its width or depth (model:), or train.batch_size")
    distributed.setup(config.device)  # before the run directory: rank 0 prepares it for all
    run = distributed.on_main(lambda: RunDir.prepare(out, {"arch": arch.to_dict(), **config_to_dict(config)}, resume))
    with run.kept_once_started():
        trainer = Trainer(config, arch, run, quiet, dataset)
        trainer.fit()
    if not distributed.is_main():  # rank 0 tests and writes the report
        return {"command": "train", "run_dir": str(run.path), "rank": distributed.rank()}
    last, best = trainer.test("last"), trainer.test("best")
    from hwnas.plots import plot_confusion_matrix, plot_training_curves

    plots = plot_training_curves(trainer.history, run.path / "training_curves.png")
    plots += plot_confusion_matrix(last["confusion_matrix"], run.path / "confusion_matrix.png",
                                   f"test accuracy {last['test_acc']:.2%} (last epoch)")
    model, data = trainer.model, trainer.dataset
    report = {
        "command": "train", "run_dir": str(run.path), "arch": arch.to_dict(), "arch_text": arch_text(arch),
        "network": type(model).__name__, "dataset": data.name, "num_classes": data.num_classes,
        "params": count_parameters(model), "macs": count_macs(model, (data.channels, data.image_size, data.image_size)),
        "epochs": len(trainer.history), "eval_split": trainer.eval_name,
        "test_acc": last["test_acc"], "last": last, "best": best,
        "train_seconds": round(sum(row["seconds"] for row in trainer.history), 2),
        "seconds_this_session": round(time.perf_counter() - started, 2),
        "weights": {"last": str(run.file("weights/last.pt")), "best": str(run.file("weights/best.pt"))},
        "plots": [p.name for p in plots],
    }
    write_json(run.file("report.json"), report)
    return report
