"""The one bilevel search loop every method runs on.

Weight steps (SGD, cosine schedule, gradient clipping) on the weight half of the training set,
architecture steps (Adam) on the architecture half, in the order the recipe says. One persistent
stream per split. After each epoch: evaluate on the architecture half, derive the architecture,
log, and checkpoint atomically; `resume` continues from the last checkpoint and, on CPU with the
same seed, ends bit for bit where an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from hwnas import distributed
from hwnas.allocator import keep_freed_memory
from hwnas.config import SearchConfig, config_to_dict
from hwnas.data import BatchStream, Dataset, Source, iterate_once, load_dataset, split_indices
from hwnas.errors import CheckpointError
from hwnas.kinds import kind_of
from hwnas.latency.check import check_before_search
from hwnas.methods import SearchMethod, frozen, get_method
from hwnas.models import count_parameters
from hwnas.ops import PRIMITIVES
from hwnas.plots import plot_arch_weights
from hwnas.runs import RunDir, load_checkpoint, save_checkpoint, write_csv, write_json

log = logging.getLogger("hwnas.search")


def cosine_lr(epoch: int, epochs: int, lr: float, lr_min: float) -> float:
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def seed_of(*parts: Any) -> int:
    """A stable seed from a run's seed and names (stage, stream): the same in every process and session."""
    return zlib.crc32(repr(parts).encode())


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


def arch_to_json(arch: Any) -> dict[str, Any]:
    return arch.to_dict() if hasattr(arch, "to_dict") else arch


class RunningMean:
    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, value: float, n: int) -> None:
        self.total, self.count = self.total + value * n, self.count + n

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


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
    loss, logits = method.arch_backward(model, train_batch, val_batch, weight_opt)
    distributed.average_gradients(model.arch_parameters())
    if grad_clip:
        nn.utils.clip_grad_norm_(model.arch_parameters(), grad_clip)
    arch_opt.step()
    method.after_arch_step(model)
    return loss.detach(), logits.detach()


class SearchLoop:
    def __init__(self, config: SearchConfig, method: SearchMethod, dataset: Dataset, run: RunDir, quiet: bool):
        self.config, self.method, self.dataset, self.run = config, method, dataset, run
        self.device = distributed.setup(config.device)
        keep_freed_memory()
        self.quiet = quiet or not distributed.is_main()
        self.memory_format = torch.channels_last if config.search.channels_last else torch.contiguous_format
        self.weight_idx, self.arch_idx = split_indices(
            len(dataset.train), config.data.train_portion, config.data.train_subset)
        self.history: list[dict[str, Any]] = []

    def run_stage(self, stage: str, build: Callable[[], nn.Module]) -> nn.Module:
        """Search one supernet from `build()` for the recipe's epochs; resumes from the stage's checkpoint."""
        cfg, recipe = self.config, self.config.search
        epochs, arch_start = recipe.epochs, recipe.arch_start_epoch
        torch.manual_seed(seed_of(cfg.seed, stage, "init"))
        model = build().to(self.device, memory_format=self.memory_format)
        if recipe.sync_bn:
            model = distributed.use_global_batch_norm(model)
        distributed.sync_module(model)
        w = recipe.weight_optimizer
        weight_opt = torch.optim.SGD(model.weight_parameters(), lr=w.lr, momentum=w.momentum,
                                     weight_decay=w.weight_decay, nesterov=w.nesterov)
        a = recipe.arch_optimizer
        arch_opt = torch.optim.Adam(model.arch_parameters(), lr=a.lr, betas=tuple(a.betas),
                                    weight_decay=a.weight_decay)
        augment, shard = cfg.data.augment, {"rank": distributed.rank(), "world_size": distributed.world_size()}
        streams = {
            "weights": BatchStream(self.dataset.train, self.weight_idx, recipe.batch_size,
                                   seed_of(cfg.seed, stage, "weights"), augment, **shard),
            "arch": BatchStream(self.dataset.train, self.arch_idx, recipe.batch_size,
                                seed_of(cfg.seed, stage, "arch"), augment, **shard),
        }
        steps = streams["weights"].batches_per_pass
        if recipe.steps_per_epoch:
            steps = min(steps, recipe.steps_per_epoch)

        start_epoch = self._restore(stage, model, weight_opt, arch_opt, streams)
        if start_epoch is None:
            return model
        if start_epoch == 0:
            log.info("%s: %s supernet, %d weights, %d architecture values, %d steps/epoch",
                     stage, self.method.name, count_parameters(model),
                     sum(p.numel() for p in model.arch_parameters()), steps)

        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            lr = cosine_lr(epoch, epochs, w.lr, w.lr_min)
            for group in weight_opt.param_groups:
                group["lr"] = lr
            extra = self.method.on_epoch_start(model, epoch, epochs)
            update_arch = epoch >= arch_start
            train_loss, train_acc, arch_loss, arch_acc = RunningMean(), RunningMean(), RunningMean(), RunningMean()
            model.train()
            bar = tqdm(range(steps), desc=f"{stage} {epoch + 1}/{epochs}", leave=False,
                       disable=self.quiet or not sys.stderr.isatty())
            by_epoch = recipe.alternate == "epoch"
            for _ in bar:
                train_batch = self._to_device(next(streams["weights"]))
                val_batch = self._to_device(next(streams["arch"])) if update_arch and not by_epoch else None
                if val_batch is not None and recipe.order == "arch_first":
                    self._arch_step(model, arch_opt, weight_opt, train_batch, val_batch, arch_loss, arch_acc)
                loss = self._weight_step(model, weight_opt, train_batch, train_loss, train_acc)
                if val_batch is not None and recipe.order == "weights_first":
                    self._arch_step(model, arch_opt, weight_opt, train_batch, val_batch, arch_loss, arch_acc)
                bar.set_postfix(loss=f"{loss:.3f}")
            if update_arch and by_epoch:  # then as many architecture steps on the architecture half
                for _ in range(steps):
                    val_batch = self._to_device(next(streams["arch"]))
                    self._arch_step(model, arch_opt, weight_opt, train_batch, val_batch, arch_loss, arch_acc)
            distributed.sync_module(model)  # rank 0's BN statistics everywhere before evaluating and saving
            # evaluation samples ops too (GDAS, DenseNAS): on a generator of its own, in batches of the global
            # batch size, so it neither moves the search's random stream nor depends on the number of ranks
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed_of(cfg.seed, stage, "evaluate", epoch))
                self.method.before_evaluation(model)
                val_loss, val_acc = evaluate(model, self.dataset.train, self.arch_idx,
                                             recipe.batch_size * distributed.world_size(), self.device)
            arch = self.method.derive(model)
            distributed.check_agreement(arch_to_json(arch), "derived architecture")
            means = distributed.mean_over_ranks(
                [train_loss.value, train_acc.value, arch_loss.value, arch_acc.value], self.device)
            row = {
                "stage": stage, "epoch": epoch + 1, "lr": lr, **extra,
                **dict(zip(("train_loss", "train_acc", "arch_loss", "arch_acc"), means)),
                "val_loss": val_loss, "val_acc": val_acc, **self.method.epoch_metrics(model),
                "seconds": time.perf_counter() - started,
                "arch": json.dumps(arch_to_json(arch)),
                "arch_weights": json.dumps(self.method.arch_weights(model)),
            }
            self.history.append(row)
            log.info("%s epoch %d/%d  lr %.4g  train loss %.3f acc %.3f  val loss %.3f acc %.3f  (%.1fs)\n%s",
                     stage, epoch + 1, epochs, lr, row["train_loss"], row["train_acc"], val_loss, val_acc,
                     row["seconds"], arch)
            self._save(stage, epoch + 1, epoch + 1 == epochs, model, weight_opt, arch_opt, streams)
        return model

    def _to_device(self, batch):
        x, y = batch
        return x.to(self.device, memory_format=self.memory_format), y.to(self.device)

    def _weight_step(self, model, opt, batch, loss_mean: RunningMean, acc_mean: RunningMean) -> float:
        loss, logits = weight_step(self.method, model, opt, batch, self.config.search.grad_clip)
        loss_mean.add(loss.item(), len(batch[1]))
        acc_mean.add(_accuracy(logits, batch[1]), len(batch[1]))
        return loss.item()

    def _arch_step(self, model, arch_opt, weight_opt, train_batch, val_batch, loss_mean: RunningMean, acc_mean: RunningMean):
        loss, logits = arch_step(self.method, model, arch_opt, weight_opt, train_batch, val_batch,
                                 self.config.search.arch_grad_clip)
        loss_mean.add(loss.item(), len(val_batch[1]))
        acc_mean.add(_accuracy(logits, val_batch[1]), len(val_batch[1]))

    def _save(self, stage, epochs_done, done, model, weight_opt, arch_opt, streams) -> None:
        if not distributed.is_main():
            return
        state = {
            "stage": stage, "epochs_done": epochs_done, "done": done,
            "model": model.state_dict(),
            "weight_optimizer": weight_opt.state_dict(), "arch_optimizer": arch_opt.state_dict(),
            "streams": {name: s.state_dict() for name, s in streams.items()},
            "rng": torch.get_rng_state(),
            "history": self.history,
            "method": self.method.state_dict(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(self.run.checkpoint(stage), state)
        write_csv(self.run.file("metrics.csv"), self.history)

    def _restore(self, stage, model, weight_opt, arch_opt, streams) -> int | None:
        """Epoch to start from (0 when fresh), or None when the stage had finished."""
        path = self.run.checkpoint(stage)
        if not path.exists():
            return 0
        state = load_checkpoint(path)
        try:
            model.load_state_dict(state["model"])
            weight_opt.load_state_dict(state["weight_optimizer"])
            arch_opt.load_state_dict(state["arch_optimizer"])
            for name, stream in streams.items():
                stream.load_state_dict(state["streams"][name])
            torch.set_rng_state(state["rng"])
            self.method.load_state_dict(state.get("method", {}))
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: does not match this search ({str(exc).splitlines()[0][:160]})") from None
        self.history = list(state["history"])
        log.info("%s: resumed after epoch %d", stage, state["epochs_done"])
        return None if state["done"] else int(state["epochs_done"])


def search(config: SearchConfig, out: str | Path, resume: bool = False, quiet: bool = False,
           check_table: bool = True) -> dict[str, Any]:
    """Run a search; returns the report (also written to `report.json`, the architecture to `arch.json`).
    `check_table`: first time the latency table's calibration networks here, when it was profiled on a
    host like this one (`hwnas run` has checked it already)."""
    started = time.perf_counter()
    dataset = load_dataset(config.data)
    method = get_method(config.method.name)(config, dataset.num_classes, dataset.channels)
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
    plots = plot_arch_weights(loop.history, run.path, column_names=PRIMITIVES)
    plots += kind_of(arch).draw(arch, run.path)
    plots += method.plots(loop.history, run.path)
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
