"""Measuring what loading a model really costs: GPU memory on CUDA, resident memory on the CPU.

The registry starts with the artifact's size as a declared estimate; after a load the worker records
the measured footprint instead (the multi-model placement and LRU residency build on it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import TypeVar

from .gpu import gpu_stats

T = TypeVar("T")


def resident_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def trim_heap() -> None:
    """Hand free heap pages back to the OS (glibc ``malloc_trim``, well under a millisecond; a no-op elsewhere).

    Without it an unloaded model's memory stays in the allocator's free lists: RSS would not go down
    after an eviction, and the next load would be measured as free (it reuses those pages). No
    ``gc.collect()`` here: a full collection costs 30-80 ms in a worker, and runtimes hold no cycles
    (dropping the session frees it).
    """
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def gpu_used_bytes() -> dict[int, int]:
    """Memory in use per CUDA device index (empty without NVML or GPUs)."""
    return {gpu.index: gpu.memory_used for gpu in gpu_stats()}


def measure(load: Callable[[], T], device_of: Callable[[T], str], fallback_bytes: int) -> tuple[T, int]:
    """Run ``load`` and return its result with the memory it took on the device it ended up on.

    The difference of two readings can be zero, negative or smaller than the weights (allocator reuse,
    other tenants on the GPU); it is never taken below ``fallback_bytes`` (the artifact size: the
    weights are in memory once loaded).
    """
    rss_before, gpu_before = resident_bytes(), gpu_used_bytes()
    result = load()
    device = device_of(result)
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        delta = gpu_used_bytes().get(index, 0) - gpu_before.get(index, 0)
    else:
        delta = resident_bytes() - rss_before
    return result, max(delta, fallback_bytes)
