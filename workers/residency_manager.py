"""The worker's resident models under its memory budget: admit a load, evict least recently used, publish.

One manager per worker, shared by every model's cache (`workers.models.ModelCache`). Loads go one at
a time (so each footprint measurement sees only its own load): a load that does not fit evicts the
least recently used unpinned versions first, and waits while pinned ones (a batch in flight) leave no
room. A version larger than the whole budget fails at once with a ModelLoadError that says so, instead
of thrashing. The state is written to ``Names.residency_key`` on every change and every heartbeat
interval (expiring after three; a mere use waits for the interval), for ``fleet status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from common.gpu import stat_for_device
from schemas import Names, now_ms
from schemas.residency import ResidentModel, WorkerResidency

from .errors import ModelLoadError
from .residency import MB, Capacity, Key, Residency
from .residency_metrics import ResidencyMetrics

log = logging.getLogger("fleet.workers")

T = TypeVar("T")
#: Unloads a resident version (on its model thread).
Evictor = Callable[[], Awaitable[None]]


def worker_capacity(budget_mb: float, overcommit_pct: float, device: str) -> Capacity:
    """The budget: ``budget_mb`` when set, else the free memory of the worker's GPU, else unlimited (CPU)."""
    if budget_mb > 0:
        return Capacity(int(budget_mb * MB), overcommit_pct)
    if device != "cpu":
        gpu = stat_for_device(device if device.startswith("cuda") else "cuda:0")
        if gpu is not None:
            return Capacity(max(0, gpu.memory_total - gpu.memory_used), overcommit_pct)
    return Capacity(None, overcommit_pct)


class ResidencyManager:
    """Admits loads under the budget, evicts LRU versions, and publishes what is resident."""

    def __init__(
        self, capacity: Capacity, metrics: ResidencyMetrics, names: Names, worker_id: str, interval_s: float
    ) -> None:
        self.residency = Residency(capacity)
        self.metrics = metrics
        self._names = names
        self._worker_id = worker_id
        self._interval_s = interval_s
        self._lock = asyncio.Lock()  # one load (with its evictions) at a time
        self._room = asyncio.Event()  # set whenever a pin is released or an entry removed
        self._evictors: dict[Key, Evictor] = {}
        self._loaded_before: set[Key] = set()
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._redis: Any = None
        metrics.budget_bytes.set(-1 if capacity.budget_bytes is None else capacity.budget_bytes)

    @property
    def capacity(self) -> Capacity:
        """The worker's budget and overcommit."""
        return self.residency.capacity

    # use -----------------------------------------------------------------------
    def pin(self, key: Key) -> bool:
        """Mark ``key`` used now and not evictable until ``unpin``; False when it is not resident."""
        # Not a change worth an immediate write: the new last use goes out with the next interval.
        return self.residency.pin(key, now_ms())

    def unpin(self, key: Key) -> None:
        """A batch on ``key`` is over: it may be evicted again."""
        self.residency.unpin(key)
        self._room.set()

    def fits_now(self, size_bytes: int) -> bool:
        """True when ``size_bytes`` fit without evicting anything."""
        free = self.residency.free_bytes()
        return free is None or free >= size_bytes

    async def load(self, key: Key, size_bytes: int, load: Callable[[], Awaitable[tuple[T, int]]], evict: Evictor) -> T:
        """Make room for ``size_bytes``, run ``load`` (-> (runtime, measured bytes)) and return it pinned.

        Raises ModelLoadError when the version can never fit, or when its measured size exceeds the budget.
        """
        model, version = key
        async with self._lock:
            while True:
                try:
                    victims = self.residency.plan(size_bytes)
                except ValueError as exc:
                    raise ModelLoadError(model, version, str(exc)) from None
                if victims is not None:
                    break
                self._room.clear()
                await self._room.wait()
            for victim in victims:
                await self._evict(victim)
            self.residency.add(key, size_bytes, now_ms())
            self._changed.set()
            try:
                runtime, measured = await load()
            except BaseException:
                self._drop(key)
                raise
            self._evictors[key] = evict
            self._loaded_before.add(key)
            self.metrics.loads.labels(model, version).inc()
            too_large = self.capacity.too_large(measured)
            if too_large is not None:
                self.residency.unpin(key)
                await self._evict(key)
                raise ModelLoadError(model, version, f"measured footprint {too_large}")
            self.residency.resize(key, measured)
            self._update_gauge()
            return runtime

    def was_loaded(self, key: Key) -> bool:
        """True when ``key`` was loaded on this worker before (a load now is a reload)."""
        return key in self._loaded_before

    async def _evict(self, key: Key) -> None:
        entry = self._drop(key)
        evict = self._evictors.pop(key, None)
        if entry is None or evict is None:
            return
        log.info("evicting %s:%s (%.1f MB, least recently used)", key[0], key[1], entry.size_bytes / MB)
        await evict()
        self.metrics.evictions.labels(*key).inc()

    def _drop(self, key: Key) -> Any:
        entry = self.residency.remove(key)
        self._room.set()
        self._changed.set()
        self._update_gauge()
        return entry

    def forget(self, key: Key) -> None:
        """``key`` was unloaded by its owner (the worker stops): no longer resident."""
        self._evictors.pop(key, None)
        self._drop(key)

    def _update_gauge(self) -> None:
        self.metrics.resident_bytes.set(self.residency.used_bytes)

    # publishing ------------------------------------------------------------------
    def state(self) -> WorkerResidency:
        """What is resident now, least recently used first."""
        capacity = self.capacity
        models = tuple(
            ResidentModel(model, version, entry.size_bytes, entry.loaded_ms, entry.last_used_ms)
            for (model, version), entry in self.residency.snapshot()
        )
        return WorkerResidency(
            self._worker_id,
            capacity.budget_bytes,
            capacity.assignable_bytes,
            self.residency.used_bytes,
            models,
            now_ms(),
        )

    async def publish(self) -> bool:
        """Write the state to Redis now; False (and a warning) when Redis is unreachable."""
        if self._redis is None:
            return False
        self._changed.clear()
        try:
            await self._redis.set(
                self._names.residency_key(self._worker_id),
                self.state().to_bytes(),
                px=max(1000, int(3000 * self._interval_s)),
            )
        except RedisError as exc:
            log.warning("residency not written: %s", exc)
            return False
        return True

    async def start(self, redis: Any) -> None:
        """Publish now and then on every change (at most every 50 ms) and every interval."""
        self._redis = redis
        await self.publish()
        self._task = asyncio.create_task(self._publish_routine(), name=f"residency-{self._worker_id}")

    async def _publish_routine(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval_s)
            await asyncio.sleep(0.05)  # coalesce a burst of changes into one write
            await self.publish()

    async def stop(self) -> None:
        """End the routine and remove the published state (idempotent)."""
        self._closing.set()
        self._changed.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._redis is not None:
            with contextlib.suppress(RedisError):
                await self._redis.delete(self._names.residency_key(self._worker_id))
            self._redis = None
