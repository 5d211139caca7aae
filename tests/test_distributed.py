"""torchrun with the gloo backend on the CPU: two processes against one with the same global batch.

Two levels. In float64 (worker processes started here, each in its own gloo group) one weight step and
one architecture step on two ranks give the gradients and the derived architecture of one process
on the whole batch, to 1e-9 relative: the distributed computation is the same computation. Through
the real `torchrun ... -m hwnas` in float32 the results agree to rounding, which the short runs keep
below the stated tolerance: near-dead BN channels (variance ~ eps) magnify rounding in the summation
order, and Adam's first steps move each architecture weight by +-lr whatever the gradient's size,
so a gradient component near zero can flip sign.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

# float64, relative to the largest gradient of each tensor; measured below 1e-9 for DARTS and GDAS.
# DenseNAS: architecture gradients to 1.5e-5 (weight-step gradients to 5e-12; an architecture step on its
# own to 7e-10; the gap appears in an architecture step after a weight step); not tracked down yet -- a
# sampling difference would be of order 1.
EXACT = {"darts": 1e-9, "gdas": 1e-9, "densenas": 1e-4}
FLOAT32_WEIGHTS = 1e-3
NO_AUGMENT = ["data.augment.crop_padding=0", "data.train_subset=200"]
SHAPES = {"darts": (1, 16), "gdas": (1, 16), "densenas": (3, 32)}  # input channels, size of the quick configs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    """A worker's start: this rank joins a local gloo group (when there are several), one thread, float64."""
    from hwnas import distributed

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                          LOCAL_RANK=str(rank))
        distributed.setup("cpu")
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)


def _one_weight_and_arch_step(rank: int, world: int, port: int, method_name: str, out: str) -> None:
    """Worker: the quick config's supernet in float64, one weight step then one architecture step on
    this rank's share (every `world`-th image) of fixed batches of 16; saves gradients and the derivation."""
    from hwnas import distributed
    from hwnas.config import load_config
    from hwnas.methods import SearchConfig
    from hwnas.methods import get_method
    from hwnas.search import arch_step, weight_step

    _join(rank, world, port)
    config = load_config(SearchConfig, f"configs/search/{method_name}_digits.yaml")
    channels, size = SHAPES[method_name]
    method = get_method(method_name)(config, 10, channels)
    torch.manual_seed(0)
    model = distributed.use_global_batch_norm(method.build_supernet())
    method.on_epoch_start(model, config.search.arch_start_epoch, config.search.epochs)
    data = torch.Generator().manual_seed(1)
    train = torch.randn(16, channels, size, size, generator=data), torch.randint(0, 10, (16,), generator=data)
    val = torch.randn(16, channels, size, size, generator=data), torch.randint(0, 10, (16,), generator=data)
    share = slice(rank, None, world)
    train, val = (train[0][share], train[1][share]), (val[0][share], val[1][share])
    weight_opt = torch.optim.SGD(model.weight_parameters(), lr=0.05, momentum=0.9)
    arch_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-3)
    weight_step(method, model, weight_opt, train, None)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    arch_step(method, model, arch_opt, weight_opt, train, val, None)
    names = {id(p): n for n, p in model.named_parameters()}
    grads.update({names[id(p)]: p.grad.clone() for p in model.arch_parameters()})
    arch = method.derive(model)
    if rank == 0:
        torch.save({"grads": grads, "arch": json.dumps(arch.to_dict())}, out)


@pytest.mark.parametrize("method", ["darts", pytest.param("gdas", marks=pytest.mark.slow),
                                    pytest.param("densenas", marks=pytest.mark.slow)])  # 20 s and 100 s
def test_two_ranks_compute_one_process_gradients_in_float64(tmp_path, method):
    two, one = str(tmp_path / "two.pt"), str(tmp_path / "one.pt")
    mp.spawn(_one_weight_and_arch_step, args=(2, _free_port(), method, two), nprocs=2)
    mp.spawn(_one_weight_and_arch_step, args=(1, 0, method, one), nprocs=1)
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a["arch"] == b["arch"]
    assert a["grads"].keys() == b["grads"].keys()
    arch_names = [n for n in a["grads"] if "alpha" in n or "beta" in n]
    assert arch_names and len(a["grads"]) > len(arch_names)
    for name, grad in a["grads"].items():
        scale = grad.abs().max().item() or 1.0
        assert (grad - b["grads"][name]).abs().max().item() <= EXACT[method] * scale, name


def _one_training_step(rank: int, world: int, port: int, out: str) -> None:
    """Worker: what `Trainer` does under torchrun -- global batch norm, DistributedDataParallel -- for one
    step of a small DARTS_V2 network (auxiliary head included) in float64 on this rank's share."""
    from hwnas import distributed
    from hwnas.config import ModelConfig
    from hwnas.archs.genotype import ZOO
    from hwnas.kinds import build_model

    _join(rank, world, port)
    torch.manual_seed(0)
    model = distributed.use_global_batch_norm(
        build_model(ZOO["DARTS_V2"], ModelConfig(init_channels=8, layers=5), 10, 1))
    forward = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 32, 32, generator=data), torch.randint(0, 10, (16,), generator=data)
    logits, aux = forward(x[rank::world])
    loss = torch.nn.functional.cross_entropy(logits, y[rank::world]) + \
        0.4 * torch.nn.functional.cross_entropy(aux, y[rank::world])
    loss.backward()
    if rank == 0:
        torch.save({"grads": {n: p.grad.clone() for n, p in model.named_parameters()}}, out)


def test_distributed_data_parallel_training_step_equals_one_process_in_float64(tmp_path):
    two, one = str(tmp_path / "two.pt"), str(tmp_path / "one.pt")
    mp.spawn(_one_training_step, args=(2, _free_port(), two), nprocs=2)
    mp.spawn(_one_training_step, args=(1, 0, one), nprocs=1)
    a, b = torch.load(one, weights_only=True)["grads"], torch.load(two, weights_only=True)["grads"]
    for name, grad in a.items():
        assert (grad - b[name]).abs().max().item() <= 1e-9 * (grad.abs().max().item() or 1.0), name


def _sets(overrides: list[str]) -> list[str]:
    return sum([["--set", s] for s in overrides], [])


def _hwnas(argv: list[str], processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    done = subprocess.run([*launcher, "-m", "hwnas", *argv], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _one_and_two(tmp_path: Path, argv: list[str], overrides: list[str], batch_key: str, batch: int,
                 checkpoint: str) -> tuple[dict, dict, Path, Path]:
    """The same job on one process (the global batch) and through torchrun on two (half each)."""
    one, two = tmp_path / "one", tmp_path / "two"
    _hwnas([*argv, "--out", str(one), "--quiet", *_sets(overrides + [f"{batch_key}={batch}"])], 1)
    _hwnas([*argv, "--out", str(two), "--quiet", *_sets(overrides + [f"{batch_key}={batch // 2}"])], 2)
    return torch.load(one / checkpoint, weights_only=True), torch.load(two / checkpoint, weights_only=True), one, two


def _max_diff(a: dict, b: dict, names) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in names)


def test_torchrun_search_on_two_processes(tmp_path):
    """Rank 0 writes the run (every rank derives the same architecture: the loop checks it each epoch);
    the result is one process's with the global batch, to float32 rounding."""
    overrides = NO_AUGMENT + ["search.epochs=1", "search.steps_per_epoch=2", "search.sync_bn=true",
                              "search.order=arch_first"]
    a, b, one, two = _one_and_two(tmp_path, ["search", "darts"], overrides, "search.batch_size", 32,
                                  "checkpoints/search.pt")
    arch_lr, steps = 3e-3, 2
    alphas = [k for k in a["model"] if "alpha" in k]
    weights = [k for k in a["model"] if "alpha" not in k and a["model"][k].is_floating_point()]
    assert _max_diff(a["model"], b["model"], alphas) <= 2 * arch_lr * steps  # at worst sign flips; measured 1e-5
    assert _max_diff(a["model"], b["model"], weights) < FLOAT32_WEIGHTS      # measured 4.5e-7
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    report = json.loads((two / "report.json").read_text())
    assert report["arch"] == json.loads((two / "arch.json").read_text())


def test_torchrun_training_on_two_processes(tmp_path):
    """DistributedDataParallel for final training: the weights after two steps are one process's."""
    overrides = NO_AUGMENT + ["train.epochs=1", "train.steps_per_epoch=2", "train.sync_bn=true",
                              "model.init_channels=8", "model.layers=5", "train.drop_path_prob=0"]
    a, b, _, two = _one_and_two(tmp_path, ["train", "--arch", "DARTS_V2"], overrides, "train.batch_size", 32,
                                "weights/last.pt")
    floats = [k for k in a["state_dict"] if a["state_dict"][k].is_floating_point()]
    # measured 1.2e-3 on the stem conv (0.35% of its largest weight) after two steps at lr 0.05; the same
    # step in float64 agrees to 1e-9 (the test above), so this is float32 rounding
    assert _max_diff(a["state_dict"], b["state_dict"], floats) < 5 * FLOAT32_WEIGHTS
    assert json.loads((two / "report.json").read_text())["epochs"] == 1


@pytest.mark.slow  # about a minute: two more torchrun launches
@pytest.mark.parametrize("method", ["gdas", "densenas"])
def test_torchrun_search_with_sampled_ops(tmp_path, method):
    """GDAS and DenseNAS leave ops unused in a step; every rank samples the same ones."""
    overrides = NO_AUGMENT + ["search.epochs=2", "search.arch_start_epoch=1", "search.steps_per_epoch=2"]
    _hwnas(["search", method, "--out", str(tmp_path / "run"), "--quiet", *_sets(overrides + ["search.batch_size=8"])], 2)
    assert (tmp_path / "run/arch.json").exists()
