"""Sizes of final networks and search supernets (`hwnas info`)."""

from __future__ import annotations

from typing import Any

from hwnas.config import SearchConfig, build_config, read_yaml, resolve_path
from hwnas.errors import HwnasError
from hwnas.genotypes import load_genotype
from hwnas.methods import get_method
from hwnas.models import count_macs, count_parameters
from hwnas.models.cell_net import NetworkCIFAR, NetworkImageNet
from hwnas.models.routed_net import RoutedNetwork
from hwnas.routed import ROUTED_ZOO, is_routed_file, load_routed_arch
from hwnas.spaces.definition import load_space

# dataset -> (init channels, cells, classes, input size) of the published final networks
FINAL_SETTINGS = {"cifar10": (36, 20, 10, 32), "imagenet": (48, 14, 1000, 224)}


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise HwnasError(f"{name} must be positive, got {value}")


def arch_info(arch: str, dataset: str = "cifar10", init_channels: int | None = None, layers: int | None = None,
              num_classes: int | None = None) -> dict[str, Any]:
    for name, value in (("--init-channels", init_channels), ("--layers", layers), ("--num-classes", num_classes)):
        _positive(name, value)
    if arch in ROUTED_ZOO or is_routed_file(arch):
        return routed_arch_info(arch, num_classes)
    genotype = load_genotype(arch)
    C, cells, classes, size = FINAL_SETTINGS[dataset]
    C, cells, classes = init_channels or C, layers or cells, num_classes or classes
    build = NetworkImageNet if dataset == "imagenet" else NetworkCIFAR
    try:
        model = build(genotype, C=C, num_classes=classes, layers=cells, auxiliary=True)
    except ValueError as exc:
        raise HwnasError(f"cannot build {arch} with C={C}: {exc}") from None
    return {
        "name": arch, "network": f"{build.__name__} C={C} cells={cells} classes={classes}",
        "params": count_parameters(model), "macs": count_macs(model, (3, size, size)),
        "input": f"3x{size}x{size}", "arch": genotype.to_dict(), "arch_text": str(genotype),
    }


def routed_arch_info(arch: str, num_classes: int | None = None) -> dict[str, Any]:
    """A routed (DenseNAS) network in the space its architecture names, at that space's input size."""
    routed = load_routed_arch(arch)
    space = load_space(routed.space)
    classes = num_classes or space.num_classes
    model = RoutedNetwork(space, routed, classes)
    size = space.input_size
    return {
        "name": arch, "network": f"RoutedNetwork space={space.name} classes={classes}",
        "params": count_parameters(model), "macs": count_macs(model, (space.input_channels, size, size)),
        "input": f"{space.input_channels}x{size}x{size}", "arch": routed.to_dict(), "arch_text": routed.format(space),
    }


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
    data = {"method": data["method"], "supernet": {**(data.get("supernet") or {}), **(supernet or {})},
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
    s = config.supernet
    return {
        "name": f"{method} supernet", "network": f"C={s.init_channels} cells={s.layers} nodes={s.nodes}",
        "params": count_parameters(model), "macs": count_macs(model, (3, 32, 32)), "input": "3x32x32",
        "arch_params": sum(p.numel() for p in model.arch_parameters()),
    }
