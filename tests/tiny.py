"""Tiny cell-search settings shared by the method tests: a few seconds per search on 2 cores."""

from hwnas.config import load_config
from hwnas.methods import SearchConfig

TINY = [
    "data.image_size=8", "data.train_subset=192", "method.supernet.init_channels=4", "method.supernet.layers=3",
    "method.supernet.nodes=2", "search.batch_size=16", "search.steps_per_epoch=3", "search.epochs=3",
]


def tiny_config(method: str, *extra: str) -> SearchConfig:
    """The method's quick digits recipe with the TINY overrides (then `extra`)."""
    return load_config(SearchConfig, f"configs/search/{method}_digits.yaml", TINY + list(extra))
