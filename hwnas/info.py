"""Sizes of final networks and search supernets (`hwnas info`)."""

from __future__ import annotations

from typing import Any

from hwnas.config import SearchConfig, build_config, read_yaml, resolve_path
from hwnas.errors import HwnasError
from hwnas.kinds import kind_of, load_arch
from hwnas.methods import get_method
from hwnas.models import count_macs, count_parameters
from hwnas.spaces.definition import load_space

def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise HwnasError(f"{name} must be positive, got {value}")


def arch_info(arch: str, dataset: str = "cifar10", init_channels: int | None = None, layers: int | None = None,
              num_classes: int | None = None) -> dict[str, Any]:
    for name, value in (("--init-channels", init_channels), ("--layers", layers), ("--num-classes", num_classes)):
        _positive(name, value)
    architecture = load_arch(arch)
    return kind_of(architecture).info(arch, architecture, dataset, init_channels, layers, num_classes)


def routing_supernet_info(num_classes: int | None = None, space_name: str = "densenas_32") -> dict[str, Any]:
    """The DenseNAS supernet of the quick recipe's space; multiply-adds with one op (the first) per layer,
    every routing path evaluated."""
    from hwnas.spaces.routing import RoutingSupernet

    space = load_space(space_name)
    model = RoutingSupernet(space, num_classes or space.num_classes)
    size = space.input_size
    return {
        "name": "densenas supernet", "network": f"routing supernet space={space.name} (first op of every layer)",
        "params": count_parameters(model), "macs": count_macs(model, (space.input_channels, size, size)),
        "input": f"{space.input_channels}x{size}x{size}", "arch_params": sum(p.numel() for p in model.arch_parameters()),
    }


def recipe_supernet_config(method: str, supernet: dict[str, int] | None = None) -> SearchConfig:
    """The supernet as the method's published CIFAR recipe builds it (P-DARTS: its first stage),
    with `supernet` overrides; also used by the step benchmark."""
    recipe = resolve_path(f"configs/search/{method}_cifar10.yaml")
    data = read_yaml(recipe) if recipe.is_file() else {"method": {"name": method}}
    channels_last = (data.get("search") or {}).get("channels_last", False)
    method_options = data["method"] if isinstance(data["method"], dict) else {"name": data["method"]}
    data = {"method": {**method_options, "supernet": {**(method_options.get("supernet") or {}), **(supernet or {})}},
            "search": {"channels_last": channels_last}}
    return build_config(SearchConfig, data, f"{recipe} (supernet)")


def supernet_info(method: str, init_channels: int | None = None, layers: int | None = None,
                  num_classes: int | None = None) -> dict[str, Any]:
    for name, value in (("--init-channels", init_channels), ("--layers", layers), ("--num-classes", num_classes)):
        _positive(name, value)
    if method == "densenas":
        return routing_supernet_info(num_classes)
    supernet: dict[str, int] = {}
    if init_channels:
        supernet["init_channels"] = init_channels
    if layers:
        supernet["layers"] = layers
    config = recipe_supernet_config(method, supernet)
    model = get_method(method)(config, num_classes or 10, 3).build_supernet()
    s = config.method.supernet
    return {
        "name": f"{method} supernet", "network": f"C={s.init_channels} cells={s.layers} nodes={s.nodes}",
        "params": count_parameters(model), "macs": count_macs(model, (3, 32, 32)), "input": "3x32x32",
        "arch_params": sum(p.numel() for p in model.arch_parameters()),
    }
