"""Partition leases in Redis: which pool worker consumes a topic-partition, and which partitions it should own.

A partition is consumed only under a lease ``Names.lease_key(topic, p)`` holding the worker id. A lease is
not renewed per partition: it stays valid while its holder is live, and a holder is live while its
liveness key ``Names.lease_holder_key(worker)`` exists. The worker refreshes that one key every heartbeat
(``SET ... PX ttl``, `keep_alive`), so a worker's lease upkeep is one command per beat whatever the number
of partitions it holds, and claims and releases happen only when ownership changes.

Why a liveness key of its own, not the heartbeat hash or the ``{ns}:workers`` scores: Redis expires the key
on its own clock, so no two hosts' clocks are compared (the scores are the workers' wall clocks); the
routine that writes it is the one that fences the worker (it knows when its last write went out, so it can
stop fetching before the key may have lapsed); and a stopped worker's heartbeat hash outlives its
consuming.

The claim script takes a lease that is free, or held by a worker whose liveness key is gone (it crashed,
or could not reach Redis for longer than the TTL), and refreshes the claimer's own liveness in the same
step. Releasing is a compare-and-delete, so a worker never deletes another's lease. A crashed worker's
partitions are claimed by their new owners once its liveness lapsed; a worker that lets a partition go
first finishes and commits what it has in hand, then deletes the lease so the new owner starts at once.
Lease keys have no expiry of their own: the only ones left behind are a crashed worker's on partitions
nobody claims afterwards (a model removed meanwhile), a few bytes each, free to any claimer.

Which partitions a worker should own is pure arithmetic on the model's replicas (the sorted ids of the
workers that serve it): partition p of each of the model's topics goes to ``replicas[p % len(replicas)]``.
The replicas come from the models' placement statuses, read again only when the placement epoch moved
(`PlacementReplicas`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from common import text
from schemas import Names

log = logging.getLogger("fleet.workers")

# ARGV: worker id, liveness key of the caller, liveness PX (ms), liveness key prefix.
# First 1 when the caller's liveness key existed before this call, then for each key: taken when free or when
# its holder's liveness key is gone; 1 where the caller holds it afterwards.
_CLAIM = """
local had = redis.call('SET', ARGV[2], ARGV[1], 'PX', ARGV[3], 'GET')
local held = {had and 1 or 0}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v == ARGV[1] then
    held[i + 1] = 1
  elseif (not v) or redis.call('EXISTS', ARGV[4] .. v) == 0 then
    redis.call('SET', key, ARGV[1])
    held[i + 1] = 1
  else
    held[i + 1] = 0
  end
end
return held
"""
# Each key: delete when ours.
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    n = n + redis.call('DEL', key)
  end
end
return n
"""
#: Keys per script call (a worker's claims cost a few calls, not one each) and per MGET (one command).
_BATCH = 500
_MGET_BATCH = 10_000


def owned_partitions(worker_id: str, replicas: Sequence[str], partitions: int) -> list[int]:
    """The partitions (of ``partitions``) that ``worker_id`` owns among ``replicas`` (it counts as one)."""
    ordered = sorted(set(replicas) | {worker_id})
    index, count = ordered.index(worker_id), len(ordered)
    return [p for p in range(partitions) if p % count == index]


class PartitionLeases:
    """One worker's leases: its liveness, and claims, checks and releases (one call per 500 partitions).

    ``ttl_ms`` is the liveness TTL: another worker may take this one's leases ``ttl_ms`` after its last
    liveness write reached Redis. `fenced` turns true ``margin_ms`` before that (by the local clock, from
    when the last successful write was sent), so the worker stops fetching with time left for a round in
    hand to finish. A write that finds the liveness key gone (expired meanwhile, or lost by Redis) counts a
    lapse: any held lease may have been taken over, so the worker stays fenced until it has checked them
    and reports that with `checked`.
    """

    def __init__(
        self,
        redis: Any,
        names: Names,
        worker_id: str,
        ttl_ms: int,
        *,
        margin_ms: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._names = names
        self.worker_id = worker_id
        self.ttl_ms = ttl_ms
        self._margin_s = (ttl_ms // 3 if margin_ms is None else margin_ms) / 1000
        self._clock = clock
        self._alive_key = names.lease_holder_key(worker_id)
        self._alive_sent: float | None = None  # when the last successful liveness write was sent (clock s)
        #: Times the liveness key was found gone (or a write came too late); `checked` says up to which.
        self.lapses = 0
        self._checked = 0
        self._claim = redis.register_script(_CLAIM)  # EVALSHA, loaded on first use
        self._release = redis.register_script(_RELEASE)

    @property
    def lapsed(self) -> bool:
        """Whether a lapse has not been checked yet (the held leases may have been taken over)."""
        return self.lapses != self._checked

    def checked(self, lapses: int) -> None:
        """The held leases were checked after ``lapses`` lapses (`lapses` read before checking)."""
        self._checked = lapses

    @property
    def fenced(self) -> bool:
        """True while the liveness may lapse soon (or never was written) or a lapse is not checked yet:
        consume nothing meanwhile."""
        sent = self._alive_sent
        return self.lapsed or sent is None or self._clock() >= sent + self.ttl_ms / 1000 - self._margin_s

    def _written(self, sent: float, found: bool) -> None:
        """A liveness write sent at ``sent`` succeeded; ``found``: the key still existed when it arrived."""
        if self._alive_sent is not None and (not found or self._clock() - self._alive_sent >= self.ttl_ms / 1000):
            self.lapses += 1  # it expired before this write, or may have: another worker may hold our leases
        self._alive_sent = sent

    async def keep_alive_routine(self, interval_s: float, lapsed: Callable[[], None]) -> None:
        """`keep_alive` every ``interval_s`` until cancelled (a failure is logged and tried again next time);
        calls ``lapsed`` when the liveness lapsed, and logs when the worker turns fenced and live again."""
        fenced_before = False
        while True:
            try:
                await self.keep_alive()
            except RedisError as exc:
                log.warning("pool: liveness of worker %s not written: %s", self.worker_id, exc)
            if self.lapsed:
                lapsed()
            if self.fenced != fenced_before:
                fenced_before = self.fenced
                state = "fenced (its liveness may lapse): it consumes nothing" if fenced_before else "live again"
                log.warning("pool: worker %s %s", self.worker_id, state)
            await asyncio.sleep(interval_s)

    async def keep_alive(self) -> None:
        """Refresh the liveness key (one command); counts a lapse when it had expired. Raises RedisError."""
        sent = self._clock()
        previous = await self._redis.set(self._alive_key, self.worker_id, px=self.ttl_ms, get=True)
        self._written(sent, previous is not None)

    async def claim(self, partitions: Sequence[tuple[str, int]]) -> list[bool]:
        """Claim each ``(topic, partition)`` (and refresh the liveness); True where this worker holds it now.
        Raises RedisError."""
        held: list[bool] = []
        prefix = self._names.lease_holder_key("")
        for start in range(0, len(partitions), _BATCH):
            keys = [self._names.lease_key(t, p) for t, p in partitions[start : start + _BATCH]]
            sent = self._clock()
            args = [self.worker_id, self._alive_key, self.ttl_ms, prefix]
            had, *found = await self._claim(keys=keys, args=args)
            self._written(sent, bool(had))
            held.extend(bool(r) for r in found)
        return held

    async def release(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Delete the leases of ``partitions`` this worker holds (others' are left alone). Raises RedisError."""
        for start in range(0, len(partitions), _BATCH):
            keys = [self._names.lease_key(t, p) for t, p in partitions[start : start + _BATCH]]
            await self._release(keys=keys, args=[self.worker_id])

    async def retire(self) -> None:
        """Delete the liveness key (a clean stop, after `release`). Raises RedisError."""
        await self._redis.delete(self._alive_key)
        self._alive_sent = None

    async def holders(self, partitions: Sequence[tuple[str, int]]) -> list[str | None]:
        """Who holds each lease (None: nobody), in one MGET per 10,000. Raises RedisError."""
        values: list[Any] = []
        for start in range(0, len(partitions), _MGET_BATCH):
            keys = [self._names.lease_key(t, p) for t, p in partitions[start : start + _MGET_BATCH]]
            values += await self._redis.mget(keys)
        return [None if v is None else text(v) for v in values]


class PlacementReplicas:
    """Each model's replicas, the sorted ids of the workers its placement status lists (``worker_id`` always
    among them), read again only when ``Names.placement_epoch_key`` moved (every model's) or for models not
    read before: one GET per call while nothing changes."""

    def __init__(self, redis: Any, names: Names, worker_id: str) -> None:
        self._redis = redis
        self._names = names
        self._worker_id = worker_id
        self._epoch: Any = None
        self._read = False
        self._cache: dict[str, list[str]] = {}

    async def read(self, models: Sequence[str]) -> dict[str, list[str]]:
        """The replicas of each of ``models``. Raises RedisError."""
        epoch = await self._redis.get(self._names.placement_epoch_key)
        moved = not self._read or epoch != self._epoch
        stale = list(models) if moved else [m for m in models if m not in self._cache]
        if stale:
            async with self._redis.pipeline(transaction=False) as pipe:
                for model in stale:
                    pipe.hget(self._names.placement_key(model), "workers")
                found = await pipe.execute()
            for model, raw in zip(stale, found, strict=True):
                self._cache[model] = sorted({w for w in text(raw or b"").split(",") if w} | {self._worker_id})
            # Read after the epoch: a change in between moves it again, so it is read again next time.
            self._epoch, self._read = epoch, True
        wanted = set(models)
        self._cache = {m: r for m, r in self._cache.items() if m in wanted}
        return {m: self._cache[m] for m in models}
