"""The one bilevel search loop every method runs on, driving the shared training engine (`hwnas/engine.py`).

Weight steps (SGD, cosine schedule, gradient clipping) on the weight half of the training set,
architecture steps (Adam) on the architecture half, in the order the recipe says. One persistent
stream per split. After each epoch: evaluate on the architecture half, derive the architecture,
log, and checkpoint atomically; `resume` continues from the last checkpoint and, on CPU with the
same seed, ends bit for bit where an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from hwnas import distributed
from hwnas.config import config_to_dict
from hwnas.methods import SearchConfig
from hwnas.data import BatchStream, Dataset, Source, iterate_once, load_dataset, split_indices
from hwnas.engine import Engine, Parts, RunningMean, cosine_lr, seed_of
from hwnas.kinds import kind_of
from hwnas.latency.check import check_before_search
from hwnas.memory import require_memory
from hwnas.methods import SearchMethod, frozen, get_method
from hwnas.models import count_parameters
from hwnas.runs import RunDir, write_json

log = logging.getLogger("hwnas.search")


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


def arch_to_json(arch: Any) -> dict[str, Any]:
    return arch.to_dict() if hasattr(arch, "to_dict") else arch


@torch.no_grad()
def evaluate(model: nn.Module, source: Source, indices: torch.Tensor | None, batch_size: int,
             device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over `indices` of `source` (all when None), in eval mode."""
    model.eval()
    loss, acc = RunningMean(), RunningMean()
    for x, y in iterate_once(source, indices, batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss.add(nn.functional.cross_entropy(logits, y).item(), len(y))
        acc.add(_accuracy(logits, y), len(y))
    model.train()
    return loss.value, acc.value


def weight_step(method: SearchMethod, model: nn.Module, opt: torch.optim.Optimizer, batch,
                grad_clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, clip and SGD step on the network weights (architecture weights frozen)."""
    opt.zero_grad(set_to_none=True)
    method.sample(model, "weights")
    with frozen(model.arch_parameters()):
        loss, logits = method.loss(model, *batch)
        loss.backward()
    distributed.average_gradients(model.weight_parameters())
    if grad_clip:
        nn.utils.clip_grad_norm_(model.weight_parameters(), grad_clip)
    opt.step()
    return loss.detach(), logits.detach()


def arch_step(method: SearchMethod, model: nn.Module, arch_opt: torch.optim.Optimizer,
              weight_opt: torch.optim.Optimizer, train_batch, val_batch,
              grad_clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The method's architecture gradient, clip, Adam step, and the method's after-step hook."""
    arch_opt.zero_grad(set_to_none=True)
    method.sample(model, "arch")
    loss, logits = method.arch_backward(model, train_batch, val_batch, weight_opt)
    distributed.average_gradients(model.arch_parameters())
    if grad_clip:
        nn.utils.clip_grad_norm_(model.arch_parameters(), grad_clip)
    arch_opt.step()
    method.after_arch_step(model)
    return loss.detach(), logits.detach()


class HeldOut:
    """The images a finished search may test candidate networks on: a few augmented batches of the weight
    half, to measure a candidate's batch-norm statistics, and the architecture half, to test it on
    (`hwnas/supernets/ranking.py`). Made on first use: most searches never ask."""

    CALIBRATION_BATCHES = 10
    EVALUATION_BATCH = 256

    def __init__(self, config: SearchConfig, dataset: Dataset, device: torch.device | str):
        self.config, self.dataset, self.device = config, dataset, device
        self.weight_idx, self.arch_idx = split_indices(
            len(dataset.train), config.data.train_portion, config.data.train_subset)

    def calibration(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        stream = BatchStream(self.dataset.train, self.weight_idx, self.config.search.batch_size,
                             seed_of(self.config.seed, "calibration"), self.config.data.augment)
        return [self._on_device(next(stream)) for _ in range(self.CALIBRATION_BATCHES)]

    def evaluation(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self._on_device(b) for b in iterate_once(self.dataset.train, self.arch_idx, self.EVALUATION_BATCH)]

    def _on_device(self, batch):
        return tuple(t.to(self.device) for t in batch)


@dataclass
class Stage:
    """One supernet under search: the network, its two optimizers, the two batch streams."""

    name: str
    model: nn.Module
    weight_opt: torch.optim.Optimizer
    arch_opt: torch.optim.Optimizer
    streams: dict[str, BatchStream]
    steps: int
    arch: Any = None  # derived after the last epoch

    def parts(self, method: SearchMethod) -> dict[str, Any]:
        """What its checkpoint keeps."""
        return {"model": self.model, "weight_optimizer": self.weight_opt, "arch_optimizer": self.arch_opt,
                "streams": Parts(self.streams), "method": method}


class SearchLoop:
    """The bilevel search on the shared engine: a stage is one supernet searched for the recipe's epochs
    (P-DARTS runs three)."""

    def __init__(self, config: SearchConfig, method: SearchMethod, dataset: Dataset, run: RunDir, quiet: bool):
        self.config, self.method, self.dataset = config, method, dataset
        self.engine = Engine(run, config.device, config.search.channels_last, quiet)
        self.device = self.engine.device
        self.weight_idx, self.arch_idx = split_indices(
            len(dataset.train), config.data.train_portion, config.data.train_subset)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.engine.history

    def held_out(self) -> HeldOut:
        return HeldOut(self.config, self.dataset, self.device)

    def run_stage(self, name: str, build: Callable[[], nn.Module]) -> nn.Module:
        """Search one supernet from `build()`; resumes from the stage's checkpoint."""
        stage = self._set_up(name, build)
        parts = stage.parts(self.method)
        start = self.engine.restore(name, parts, "search")
        if start == 0:
            log.info("%s: %s supernet, %d weights, %d architecture values, %d steps/epoch",
                     name, self.method.name, count_parameters(stage.model),
                     sum(p.numel() for p in stage.model.arch_parameters()), stage.steps)
        self.engine.fit(name, start, self.config.search.epochs, parts, lambda e: self._epoch(stage, e),
                        lambda row: self._summary(stage, row))
        return stage.model

    def _set_up(self, name: str, build: Callable[[], nn.Module]) -> Stage:
        cfg, recipe = self.config, self.config.search
        torch.manual_seed(seed_of(cfg.seed, name, "init"))
        model = build().to(self.device, memory_format=self.engine.memory_format)
        if recipe.sync_bn:
            model = distributed.use_global_batch_norm(model)
        distributed.sync_module(model)
        w, a = recipe.weight_optimizer, recipe.arch_optimizer
        weight_opt = torch.optim.SGD(model.weight_parameters(), lr=w.lr, momentum=w.momentum,
                                     weight_decay=w.weight_decay, nesterov=w.nesterov)
        arch_opt = torch.optim.Adam(model.arch_parameters(), lr=a.lr, betas=tuple(a.betas),
                                    weight_decay=a.weight_decay)
        augment, shard = cfg.data.augment, {"rank": distributed.rank(), "world_size": distributed.world_size()}
        streams = {split: BatchStream(self.dataset.train, indices, recipe.batch_size,
                                      seed_of(cfg.seed, name, split), augment, **shard)
                   for split, indices in (("weights", self.weight_idx), ("arch", self.arch_idx))}
        steps = streams["weights"].batches_per_pass
        if recipe.steps_per_epoch:
            steps = min(steps, recipe.steps_per_epoch)
        return Stage(name, model, weight_opt, arch_opt, streams, steps)

    def _epoch(self, stage: Stage, epoch: int) -> dict[str, Any]:
        """Weight and architecture steps as the recipe orders them, then evaluation and derivation."""
        cfg, recipe, model = self.config, self.config.search, stage.model
        w = recipe.weight_optimizer
        lr = cosine_lr(epoch, recipe.epochs, w.lr, w.lr_min)
        for group in stage.weight_opt.param_groups:
            group["lr"] = lr
        extra = self.method.on_epoch_start(model, epoch, recipe.epochs)
        update_arch = epoch >= recipe.arch_start_epoch
        means = {key: RunningMean() for key in ("train_loss", "train_acc", "arch_loss", "arch_acc")}
        model.train()
        bar = self.engine.progress(stage.steps, f"{stage.name} {epoch + 1}/{recipe.epochs}")
        by_epoch = recipe.alternate == "epoch"
        for _ in bar:
            train_batch = self.engine.to_device(next(stage.streams["weights"]))
            val_batch = self.engine.to_device(next(stage.streams["arch"])) if update_arch and not by_epoch else None
            if val_batch is not None and recipe.order == "arch_first":
                self._arch_step(stage, train_batch, val_batch, means)
            loss = self._weight_step(stage, train_batch, means)
            if val_batch is not None and recipe.order == "weights_first":
                self._arch_step(stage, train_batch, val_batch, means)
            bar.set_postfix(loss=f"{loss:.3f}")
        if update_arch and by_epoch:  # then as many architecture steps on the architecture half
            for _ in range(stage.steps):
                self._arch_step(stage, train_batch, self.engine.to_device(next(stage.streams["arch"])), means)
        distributed.sync_module(model)  # rank 0's BN statistics everywhere before evaluating and saving
        # evaluation samples ops too (GDAS, DenseNAS): on a generator of its own, in batches of the global
        # batch size, so it neither moves the search's random stream nor depends on the number of ranks
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed_of(cfg.seed, stage.name, "evaluate", epoch))
            self.method.before_evaluation(model)
            val_loss, val_acc = evaluate(model, self.dataset.train, self.arch_idx,
                                         recipe.batch_size * distributed.world_size(), self.device)
        stage.arch = arch = self.method.derive(model)
        distributed.check_agreement(arch_to_json(arch), "derived architecture")
        return {
            "stage": stage.name, "epoch": epoch + 1, "lr": lr, **extra,
            **dict(zip(means, distributed.mean_over_ranks([m.value for m in means.values()], self.device))),
            "val_loss": val_loss, "val_acc": val_acc, **self.method.epoch_metrics(model),
            "arch": json.dumps(arch_to_json(arch)),
            "arch_weights": json.dumps(self.method.arch_weights(model)),
        }

    def _summary(self, stage: Stage, row: dict[str, Any]) -> str:
        return (f"{row['stage']} epoch {row['epoch']}/{self.config.search.epochs}  lr {row['lr']:.4g}  "
                f"train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}  "
                f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f}  ({row['seconds']:.1f}s)\n{stage.arch}")

    def _weight_step(self, stage: Stage, batch, means: dict[str, RunningMean]) -> float:
        loss, logits = weight_step(self.method, stage.model, stage.weight_opt, batch, self.config.search.grad_clip)
        means["train_loss"].add(loss.item(), len(batch[1]))
        means["train_acc"].add(_accuracy(logits, batch[1]), len(batch[1]))
        return loss.item()

    def _arch_step(self, stage: Stage, train_batch, val_batch, means: dict[str, RunningMean]) -> None:
        loss, logits = arch_step(self.method, stage.model, stage.arch_opt, stage.weight_opt, train_batch, val_batch,
                                 self.config.search.arch_grad_clip)
        means["arch_loss"].add(loss.item(), len(val_batch[1]))
        means["arch_acc"].add(_accuracy(logits, val_batch[1]), len(val_batch[1]))


def search(config: SearchConfig, out: str | Path, resume: bool = False, quiet: bool = False,
           check_table: bool = True) -> dict[str, Any]:
    """Run a search; returns the report (also written to `report.json`, the architecture to `arch.json`).
    `check_table`: first time the latency table's calibration networks here, when it was profiled on a
    host like this one (`hwnas run` has checked it already)."""
    started = time.perf_counter()
    dataset = load_dataset(config.data)
    method = get_method(config.method.name)(config, dataset.num_classes, dataset.channels)
    require_memory(method.build_supernet,
                   (config.search.batch_size, dataset.channels, dataset.image_size, dataset.image_size), config.device,
                   "the supernet", "its width or depth (method.supernet:, or the space), or search.batch_size")
    distributed.setup(config.device)  # before the run directory: rank 0 prepares it for all
    table = getattr(config.method, "table", None)
    table_check = distributed.on_main(lambda: check_before_search(table)) if table and check_table else None
    run = distributed.on_main(lambda: RunDir.prepare(out, config_to_dict(config), resume))
    with run.kept_once_started():
        loop = SearchLoop(config, method, dataset, run, quiet)
        arch = method.run(loop)
    arch_json = arch_to_json(arch)
    if not distributed.is_main():  # every rank derived the same architecture; rank 0 writes the run
        return {"command": "search", "arch": arch_json, "run_dir": str(run.path), "rank": distributed.rank()}
    write_json(run.file("arch.json"), arch_json)
    plots = method.plots(loop.history, run.path) + kind_of(arch).draw(arch, run.path)
    last = loop.history[-1] if loop.history else {}
    report = {
        "command": "search",
        "method": config.method.name,
        "run_dir": str(run.path),
        "arch": arch_json,
        **method.describe(arch),
        "dataset": config.data.dataset,
        "epochs": len(loop.history),
        "final": {k: last[k] for k in ("train_acc", "val_acc", "val_loss") if k in last},
        "seconds_this_session": round(time.perf_counter() - started, 2),
        "search_seconds": round(sum(row["seconds"] for row in loop.history), 2),
        "plots": [p.name for p in plots],
        **({"table_check": table_check} if table_check else {}),
        **method.report(),
    }
    write_json(run.file("report.json"), report)
    return report
