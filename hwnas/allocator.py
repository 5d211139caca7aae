"""Keep freed memory in the process from one training step to the next (glibc on Linux).

By default glibc hands freed heap memory back to the OS as soon as more than 128 KiB of it is free at
the top of the heap, which after every backward pass is nearly all of it: the next step then faults
every page back in. On the DARTS search step (benchmarks/search_step.py) that was about 80,000 page
faults per step and 10-20% of its time. The search and training loops call `keep_freed_memory()`, so
freed memory is reused by the next step, much as PyTorch's CUDA caching allocator keeps GPU memory.
Peak memory does not change; the process keeps its peak until it exits.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's largest on 64-bit machines
_kept = False


def keep_freed_memory() -> bool:
    """Stop glibc from returning freed heap memory to the OS; False where the C library is not glibc."""
    global _kept
    if _kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    # Fixing the trim threshold also fixes the mmap threshold at 128 KiB (glibc stops adapting it), which
    # would map, and fault in, every tensor afresh: raise it to the maximum first. -1: never trim.
    _kept = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
    return _kept
