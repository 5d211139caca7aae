"""A tiny routing space and a synthetic latency table for it, shared by latency and DenseNAS tests."""

import pandas as pd

from hwnas.latency.keys import routing_space_keys
from hwnas.latency.table import make_table

TINY_SPACE = """
kind: routing
name: tiny
input_size: 32
num_classes: 10
widths:       [8, 12, 16, 20]
sizes:        [16, 8, 8, 8]
stages:       [0, 1, 1, 2]
stack_layers: [0, 2, 0, 1]
head_ops: [mbconv_k3_t3, mbconv_k5_t6]
stack_ops: [mbconv_k3_t3, skip_connect]
final_width: 32
"""


def load_tiny_space(folder):
    """TINY_SPACE written to `folder` and loaded, as a user's own space file is."""
    from hwnas.spaces.definition import load_space

    path = folder / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return load_space(path)


def synthetic_table(space, overhead=0.5, **meta):
    keys = routing_space_keys(space)
    latency = {k.name: float(i + 1) for i, k in enumerate(keys)}
    results = pd.DataFrame({"key": list(latency), "median_ms": list(latency.values()), "p10_ms": list(latency.values())})
    results = results.assign(mean_ms=results.median_ms, std_ms=0.1, count=50, cv=0.01).set_index("key")
    info = {"space": space.name, "batch": 1, "runtime": "onnxruntime", "runtime_version": "x", "threads": 1,
            "call_overhead_ms": overhead, "estimator": "p10_ms", **meta}
    return make_table(results, keys, info), latency
