"""GPU inventory through NVML (nvidia-ml-py). A machine without NVIDIA GPUs or drivers reports none.

Nothing here raises: a missing library, a missing driver or a failing call all mean "no GPUs".

NVML numbers GPUs by PCI bus, CUDA by ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs) and, without it, fastest
first: ``cuda:1`` is not NVML index 1 in general. ``stat_for_device`` maps a CUDA device to its NVML entry by
UUID (torch's device properties when torch sees CUDA, else the ``CUDA_VISIBLE_DEVICES`` entry).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.constants import CPU, GPU, device_kind

from .text import text

log = logging.getLogger("fleet.gpu")


@dataclass(frozen=True, slots=True)
class GpuStats:
    """Utilization and memory of one GPU."""

    index: int
    name: str
    utilization: float  # percent of time a kernel ran over the last sample period
    memory_used: int  # bytes
    memory_total: int  # bytes
    uuid: str = ""  # NVML's "GPU-..." (or "MIG-...") identifier


def _nvml() -> Any | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # ImportError, NVMLError_LibraryNotFound, driver errors: all mean no GPU
        return None
    return pynvml


def gpu_stats(nvml: Any | None = None) -> list[GpuStats]:
    """One entry per NVIDIA GPU NVML sees; empty when NVML is missing or fails (``nvml``: a pynvml stand-in)."""
    nvml = nvml if nvml is not None else _nvml()
    if nvml is None:
        return []
    stats: list[GpuStats] = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            stats.append(
                GpuStats(
                    index=index,
                    name=text(name),
                    utilization=float(util.gpu),
                    memory_used=int(memory.used),
                    memory_total=int(memory.total),
                    uuid=text(uuid),
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


def _bare_uuid(uuid: str) -> str:
    """``GPU-0a1b...`` and torch's ``0a1b...`` compare equal."""
    uuid = uuid.strip().lower()
    return uuid[4:] if uuid.startswith("gpu-") else uuid


def torch_cuda_uuid(index: int) -> str | None:
    """The UUID torch reports for CUDA device ``index`` (None when torch is not loaded or sees no CUDA)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return None
        return str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # an index out of range, an old torch without .uuid, a driver error
        return None


def stat_for_device(
    device: str,
    stats: Sequence[GpuStats] | None = None,
    *,
    visible: str | None = None,
    cuda_uuid: Callable[[int], str | None] = torch_cuda_uuid,
) -> GpuStats | None:
    """The NVML entry of the GPU behind CUDA ``device`` ("cuda" = "cuda:0"); None on the CPU or when unknown.

    By UUID: ``cuda_uuid(index)`` first, else entry ``index`` of ``visible`` (default: ``CUDA_VISIBLE_DEVICES``)
    as a UUID or an NVML index; only with neither is the CUDA index taken for the NVML index.
    """
    if not device.startswith("cuda"):
        return None
    try:
        index = int(device.partition(":")[2] or 0)
    except ValueError:
        return None
    stats = gpu_stats() if stats is None else stats
    uuid = cuda_uuid(index)
    if uuid:
        return next((s for s in stats if s.uuid and _bare_uuid(s.uuid) == _bare_uuid(uuid)), None)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is not None:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if index >= len(entries):
            return None
        entry = entries[index]
        if entry.isdigit():
            return next((s for s in stats if s.index == int(entry)), None)
        return next((s for s in stats if s.uuid and _bare_uuid(s.uuid).startswith(_bare_uuid(entry))), None)
    return next((s for s in stats if s.index == index), None)


def mean_utilization(device: str) -> float | None:
    """GPU utilization in percent of the GPU behind ``device`` ("cuda" = 0, "cuda:N"); None on the CPU."""
    stat = stat_for_device(device)
    return None if stat is None else stat.utilization


@functools.cache  # a process's GPUs do not come and go: one NVML query, not one per served model
def device_kind_of(device: str) -> str:
    """``gpu`` when a worker configured with ``device`` runs on a GPU (``cuda...``, or ``auto`` with one
    that NVML sees), else ``cpu``: the kind its measured model sizes are recorded under."""
    if device == "auto":
        return GPU if gpu_stats() else CPU
    return device_kind(device)
