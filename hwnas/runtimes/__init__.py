"""Runtimes: what a latency table is measured with and what a network is exported to, behind one
interface (hwnas/runtimes/base.py). Looked up by the name a user types (`ort`, `torch`, `executorch`,
`litert`) or the name a table records (`onnxruntime`, ...)."""

from __future__ import annotations

from hwnas.errors import HwnasError
from hwnas.runtimes.base import FileRuntime, Runtime
from hwnas.runtimes.executorch import ExecuTorchRuntime
from hwnas.runtimes.litert import LiteRtRuntime
from hwnas.runtimes.onnx import OnnxRuntime
from hwnas.runtimes.torch_eager import TorchEager

RUNTIMES: dict[str, Runtime] = {r.name: r for r in (OnnxRuntime(), TorchEager(), ExecuTorchRuntime(), LiteRtRuntime())}

DEFAULT_RUNTIME = OnnxRuntime.name
# every precision some runtime measures, float32 first
PRECISIONS = tuple(dict.fromkeys(p for r in RUNTIMES.values() for p in r.precisions))

__all__ = ["DEFAULT_RUNTIME", "PRECISIONS", "FileRuntime", "Runtime", "RUNTIMES", "export_formats", "file_runtime_names",
           "get_runtime", "runtime_names"]


def runtime_names() -> list[str]:
    return list(RUNTIMES)


def file_runtime_names() -> list[str]:
    """The runtimes that run files, and so can have a kit for a device."""
    return [name for name, runtime in RUNTIMES.items() if isinstance(runtime, FileRuntime)]


def export_formats() -> dict[str, str]:
    """Export format -> the runtime that runs it: each file runtime's suffix, and the other forms of the
    default runtime's file (converted from the file every export writes)."""
    formats = {r.suffix.lstrip("."): r.name for r in RUNTIMES.values() if isinstance(r, FileRuntime)}
    return {**formats, **{fmt: DEFAULT_RUNTIME for fmt in RUNTIMES[DEFAULT_RUNTIME].variants}}


def get_runtime(name: str) -> Runtime:
    """The runtime a user names (`ort`) or a table records (`onnxruntime`)."""
    for runtime in RUNTIMES.values():
        if name in (runtime.name, runtime.table_name):
            return runtime
    raise HwnasError(f"unknown runtime {name!r}; hwnas knows {', '.join(RUNTIMES)}")
