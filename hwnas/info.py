"""Sizes of final networks and search supernets (`hwnas info`)."""

from __future__ import annotations

from typing import Any

from hwnas.config import build_config, read_yaml, resolve_path
from hwnas.methods import SearchConfig
from hwnas.kinds import kind_of, load_arch
from hwnas.methods import get_method
from hwnas.models import count_macs, count_parameters

def arch_info(arch: str, dataset: str = "cifar10", init_channels: int | None = None, layers: int | None = None,
              num_classes: int | None = None) -> dict[str, Any]:
    architecture = load_arch(arch)
    return kind_of(architecture).info(arch, architecture, dataset, init_channels, layers, num_classes)


def recipe_supernet_config(method: str, supernet: dict[str, int] | None = None) -> SearchConfig:
    """The supernet as the method's published CIFAR recipe builds it (P-DARTS: its first stage),
    with `supernet` overrides; also used by the step benchmark."""
    recipe = resolve_path(f"configs/search/{method}_cifar10.yaml")
    data = read_yaml(recipe) if recipe.is_file() else {"method": {"name": method}}
    channels_last = (data.get("search") or {}).get("channels_last", False)
    method_options = data["method"] if isinstance(data["method"], dict) else {"name": data["method"]}
    if supernet:
        method_options = {**method_options, "supernet": {**(method_options.get("supernet") or {}), **supernet}}
    data = {"method": method_options, "search": {"channels_last": channels_last}}
    return build_config(SearchConfig, data, f"{recipe} (supernet)")


def supernet_info(method: str, init_channels: int | None = None, layers: int | None = None,
                  num_classes: int | None = None) -> dict[str, Any]:
    """A method's search network as its recipe builds it; multiply-adds of one forward pass as the
    supernet runs untouched (DenseNAS: the first op of every layer, every routing path)."""
    overrides = {key: value for key, value in (("init_channels", init_channels), ("layers", layers)) if value}
    config = recipe_supernet_config(method, overrides)
    searcher = get_method(method)(config, num_classes or 10, 3)
    model = searcher.build_supernet()
    summary = searcher.supernet_summary()
    channels, height, width = summary["input"]
    return {
        "name": f"{method} supernet", "network": summary["network"],
        "params": count_parameters(model), "macs": count_macs(model, (channels, height, width)),
        "input": f"{channels}x{height}x{width}", "arch_params": sum(p.numel() for p in model.arch_parameters()),
    }
