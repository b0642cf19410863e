"""Measuring what loading a model really costs: GPU memory on CUDA, resident memory on the CPU.

The registry starts with the artifact's size as a declared estimate; after a load the worker records
the measured footprint instead (the multi-model placement and LRU residency build on it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from common.gpu import GpuStats, gpu_stats, stat_for_device, torch_cuda_uuid

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


def gpu_used_bytes(
    device: str,
    stats: Sequence[GpuStats] | None = None,
    *,
    visible: str | None = None,
    cuda_uuid: Callable[[int], str | None] = torch_cuda_uuid,
) -> int | None:
    """Memory in use on the GPU behind CUDA ``device`` (None on the CPU, without NVML or when unknown).

    The CUDA index is mapped to its NVML GPU by ``common.gpu.stat_for_device`` (NVML numbers GPUs in PCI
    order, CUDA fastest first or as ``CUDA_VISIBLE_DEVICES`` lists them); ``visible``/``cuda_uuid`` are its seams.
    """
    stat = stat_for_device(device, gpu_stats() if stats is None else stats, visible=visible, cuda_uuid=cuda_uuid)
    return None if stat is None else stat.memory_used


def measure(
    load: Callable[[], T],
    device_of: Callable[[T], str],
    fallback_bytes: int,
    *,
    read_gpus: Callable[[], list[GpuStats]] = gpu_stats,
    visible: str | None = None,
    cuda_uuid: Callable[[int], str | None] = torch_cuda_uuid,
) -> tuple[T, int]:
    """Run ``load`` and return its result with the memory it took on the device it ended up on.

    The difference of two readings can be zero, negative or smaller than the weights (allocator reuse,
    other tenants on the GPU); it is never taken below ``fallback_bytes`` (the artifact size: the
    weights are in memory once loaded). ``read_gpus``, ``visible`` and ``cuda_uuid`` are test seams.
    """
    rss_before, gpus_before = resident_bytes(), read_gpus()
    result = load()
    device = device_of(result)
    if device.startswith("cuda"):
        # The device is known only after the load: map it on both readings (same GPU by UUID/index).
        before = gpu_used_bytes(device, gpus_before, visible=visible, cuda_uuid=cuda_uuid)
        after = gpu_used_bytes(device, read_gpus(), visible=visible, cuda_uuid=cuda_uuid)
        delta = 0 if before is None or after is None else after - before
    else:
        delta = resident_bytes() - rss_before
    return result, max(delta, fallback_bytes)
