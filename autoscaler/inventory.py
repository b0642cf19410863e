"""GPU inventory: total, allocated and available GPUs of a host, with per-GPU utilization and memory.

NVML (nvidia-ml-py) is read through ``common.gpu`` (the same reading the workers export as metrics); a
missing library, driver or GPU means zero GPUs, never an error. The autoscaler publishes one report per
host to Redis (key layout in `autoscaler.keys`) every few seconds with a TTL, so a host that stops
reporting disappears; ``fleet status`` reads them with `read_inventory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from common import text
from common.gpu import gpu_stats
from schemas import Names
from schemas.eventloop import AsyncService

from .errors import StatsError
from .keys import inventory_index_key, inventory_key

log = logging.getLogger("fleet.autoscaler")

#: Default lifetime of a host's inventory hash (a few report intervals).
DEFAULT_INVENTORY_TTL_S = 30


@dataclass(frozen=True)
class GpuInfo:
    """One GPU: what NVML says about it and which workers the backend assigned to it."""

    index: int
    name: str
    #: Percent of time a kernel ran over NVML's last sample period.
    utilization: float
    #: Bytes of device memory in use.
    memory_used: int
    #: Bytes of device memory.
    memory_total: int
    #: Ids of the workers assigned to this GPU (several may share one).
    workers: tuple[str, ...] = ()

    @property
    def allocated(self) -> bool:
        """True when at least one worker is assigned to this GPU."""
        return bool(self.workers)

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the inventory hash."""
        return {
            "index": self.index,
            "name": self.name,
            "util": self.utilization,
            "mem_used": self.memory_used,
            "mem_total": self.memory_total,
            "workers": list(self.workers),
        }

    @classmethod
    def from_json(cls, raw: Any) -> GpuInfo:
        """Parse one stored GPU object; raises ValueError when it is malformed."""
        if not isinstance(raw, dict):
            raise ValueError(f"GPU entry {raw!r} is not an object")
        try:
            return cls(
                index=int(raw["index"]),
                name=str(raw["name"]),
                utilization=float(raw["util"]),
                memory_used=int(raw["mem_used"]),
                memory_total=int(raw["mem_total"]),
                workers=tuple(str(w) for w in raw.get("workers", ())),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"GPU entry {raw!r}: {exc}") from None


@dataclass(frozen=True)
class GpuInventory:
    """The GPUs of one host at one instant."""

    host: str
    gpus: tuple[GpuInfo, ...]
    #: Epoch ms of the measurement.
    ts_ms: float

    @property
    def total(self) -> int:
        """GPUs on the host."""
        return len(self.gpus)

    @property
    def allocated(self) -> int:
        """GPUs with at least one worker assigned."""
        return sum(1 for g in self.gpus if g.allocated)

    @property
    def available(self) -> int:
        """GPUs with no worker assigned."""
        return self.total - self.allocated

    def to_fields(self) -> dict[str, str]:
        """The Redis hash fields (see `autoscaler.keys`)."""
        return {
            "host": self.host,
            "total": str(self.total),
            "allocated": str(self.allocated),
            "available": str(self.available),
            "gpus": json.dumps([g.to_json() for g in self.gpus], separators=(",", ":")),
            "ts_ms": str(int(self.ts_ms)),
        }

    @classmethod
    def from_fields(cls, host: str, raw: Mapping[bytes, bytes]) -> GpuInventory | None:
        """Parse a stored hash; None when it is empty or malformed (it is then ignored)."""
        try:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            gpus = json.loads(fields["gpus"])
            if not isinstance(gpus, list):
                return None
            return cls(host, tuple(GpuInfo.from_json(g) for g in gpus), float(fields["ts_ms"]))
        except (KeyError, ValueError, UnicodeDecodeError):
            return None


def read_gpus() -> list[GpuInfo]:
    """One entry per visible NVIDIA GPU (no workers assigned); empty without NVML. Blocking (NVML calls)."""
    return [GpuInfo(s.index, s.name, s.utilization, s.memory_used, s.memory_total) for s in gpu_stats()]


def detect_gpu_count() -> int:
    """Number of visible NVIDIA GPUs (0 without NVML). Blocking."""
    return len(read_gpus())


def build_inventory(
    host: str, gpus: Sequence[GpuInfo], allocation: Mapping[int, Sequence[str]], ts_ms: float
) -> GpuInventory:
    """The inventory of ``host``: each GPU with the workers ``allocation`` assigns to it (pure).

    An allocation to a GPU that NVML does not list (``gpus`` forced by a setting) adds a GPU with no
    measurements, so allocated never exceeds total.
    """
    known = {g.index: g for g in gpus}
    for index in allocation:
        known.setdefault(index, GpuInfo(index, "unknown", 0.0, 0, 0))
    entries = (
        GpuInfo(g.index, g.name, g.utilization, g.memory_used, g.memory_total, tuple(sorted(allocation.get(i, ()))))
        for i, g in sorted(known.items())
    )
    return GpuInventory(host, tuple(entries), ts_ms)


async def publish_inventory(
    redis: Any, names: Names, inventory: GpuInventory, *, ttl_s: int = DEFAULT_INVENTORY_TTL_S
) -> None:
    """Write one host's inventory (one pipelined round trip)."""
    key = inventory_key(names, inventory.host)
    index = inventory_index_key(names)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=inventory.to_fields())
        pipe.expire(key, ttl_s)
        pipe.zadd(index, {inventory.host: int(inventory.ts_ms)})
        pipe.expire(index, max(ttl_s, 3600))
        await pipe.execute()


async def read_inventory(redis: Any, names: Names, *, max_age_s: float = 60.0) -> list[GpuInventory]:
    """The inventories reported within ``max_age_s``, one per host, sorted by host; raises StatsError."""
    cutoff = time.time() * 1000.0 - max_age_s * 1000.0
    index = inventory_index_key(names)
    try:
        members = await redis.zrangebyscore(index, int(cutoff), "+inf")
        hosts = sorted(text(m) for m in members)
        if not hosts:
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for host in hosts:
                pipe.hgetall(inventory_key(names, host))
            hashes = await pipe.execute()
    except RedisError as exc:
        raise StatsError(f"reading the GPU inventory failed: {exc}") from exc
    parsed = (GpuInventory.from_fields(h, raw) for h, raw in zip(hosts, hashes, strict=True))
    return [inv for inv in parsed if inv is not None and inv.ts_ms >= cutoff]


class InventoryPublisher(AsyncService):
    """Measures this host's GPUs every ``interval_s`` and publishes them with the backend's allocation."""

    def __init__(
        self,
        redis: Any,
        names: Names,
        allocation: Callable[[], Mapping[int, Sequence[str]]],
        *,
        interval_s: float = 5.0,
        host: str | None = None,
        gpus: Callable[[], list[GpuInfo]] = read_gpus,
    ) -> None:
        self._redis = redis
        self._names = names
        self._allocation = allocation
        self.interval_s = interval_s
        self.host = host or socket.gethostname()
        self._gpus = gpus
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The latest published inventory.
        self.latest: GpuInventory | None = None

    async def publish_once(self) -> GpuInventory:
        """Measure and publish now; Redis failures are logged (the next round retries)."""
        gpus = await asyncio.to_thread(self._gpus)  # NVML calls block
        inventory = build_inventory(self.host, gpus, self._allocation(), time.time() * 1000.0)
        ttl = max(DEFAULT_INVENTORY_TTL_S, int(3 * self.interval_s))
        try:
            await publish_inventory(self._redis, self._names, inventory, ttl_s=ttl)
        except RedisError as exc:
            log.warning("GPU inventory not published: %s", exc)
        self.latest = inventory
        return inventory

    async def start(self) -> None:
        """Publish once, then every ``interval_s`` in the background."""
        if self._task is not None:
            raise RuntimeError("InventoryPublisher already started")
        await self.publish_once()
        self._task = asyncio.create_task(self._publish_routine(), name="gpu-inventory")

    async def stop(self) -> None:
        """End the routine (idempotent); the last report expires by itself."""
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    async def _publish_routine(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval_s)
            if not self._closing.is_set():
                try:
                    await self.publish_once()
                except Exception:  # one bad round (NVML, allocation) must not end the reports
                    log.exception("GPU inventory round failed")
