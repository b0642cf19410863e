"""GPU inventory through NVML (nvidia-ml-py). A machine without NVIDIA GPUs or drivers reports none.

Nothing here raises: a missing library, a missing driver or a failing call all mean "no GPUs".
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from schemas.constants import CPU, GPU, device_kind

log = logging.getLogger("fleet.workers")


@dataclass(frozen=True, slots=True)
class GpuStats:
    """Utilization and memory of one GPU."""

    index: int
    name: str
    utilization: float  # percent of time a kernel ran over the last sample period
    memory_used: int  # bytes
    memory_total: int  # bytes


def _nvml() -> Any | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # ImportError, NVMLError_LibraryNotFound, driver errors: all mean no GPU
        return None
    return pynvml


def gpu_stats() -> list[GpuStats]:
    """One entry per visible NVIDIA GPU; empty when NVML is missing or fails."""
    nvml = _nvml()
    if nvml is None:
        return []
    stats: list[GpuStats] = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            stats.append(
                GpuStats(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    utilization=float(util.gpu),
                    memory_used=int(memory.used),
                    memory_total=int(memory.total),
                )
            )
    except Exception as exc:  # any NVML error: report what we have, never fail the caller
        log.debug("NVML query failed: %s", exc)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # shutting down a half-initialised NVML can fail too
            pass
    return stats


def gpu_count() -> int:
    """Number of visible NVIDIA GPUs (0 without NVML)."""
    return len(gpu_stats())


def mean_utilization(device: str) -> float | None:
    """GPU utilization in percent of the GPU behind ``device`` ("cuda" = 0, "cuda:N"); None on the CPU."""
    if not device.startswith("cuda"):
        return None
    index = int(device.partition(":")[2] or 0)
    for stat in gpu_stats():
        if stat.index == index:
            return stat.utilization
    return None


@functools.cache  # a process's GPUs do not come and go: one NVML query, not one per served model
def device_kind_of(device: str) -> str:
    """``gpu`` when a worker configured with ``device`` runs on a GPU (``cuda...``, or ``auto`` with one
    that NVML sees), else ``cpu``: the kind its measured model sizes are recorded under."""
    if device == "auto":
        return GPU if gpu_stats() else CPU
    return device_kind(device)
