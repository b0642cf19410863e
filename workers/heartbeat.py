"""The worker heartbeat: ``HSET names.worker_key(id)`` (state, models, partitions, device, labels, follows,
pid, host, caps: what it reads beyond single request envelopes, ts_ms), ``EXPIRE`` 3x the interval,
``ZADD names.workers_key ts_ms id`` (docs/ARCHITECTURE.md).

A beat writes only the fields that changed since the last beat that reached Redis (``ts_ms`` always): a
pool worker's ``models`` and ``partitions`` run to thousands of entries and rarely change. Every field is
written again after a failed beat (the hash may have expired meanwhile) and when the hash turns out to
be gone (HSET added ``ts_ms`` as a new field: it expired or Redis lost it).

Each beat also prunes ``names.workers_key``: entries whose last beat is older than ``PRUNE_AFTER_INTERVALS``
intervals (at least ``PRUNE_AFTER_MIN_MS``) belong to workers that died without stopping; a worker that
stops cleanly removes its own entry (its hash, state ``stopped``, expires on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from redis.exceptions import RedisError

from schemas import Names, now_ms
from schemas.constants import CAP_BATCH, HEARTBEAT_CAPS

log = logging.getLogger("fleet.workers")

#: A worker id whose last beat is this many of our intervals old is pruned from ``names.workers_key``.
PRUNE_AFTER_INTERVALS = 10
#: ... but never one younger than this (workers of one fleet may beat at different intervals).
PRUNE_AFTER_MIN_MS = 60_000


class WorkerState(StrEnum):
    """Lifecycle state published in the heartbeat."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Heartbeat:
    """Publishes the worker's state every ``interval_s`` and on every state change."""

    def __init__(
        self,
        redis: Any,
        names: Names,
        worker_id: str,
        models: Sequence[str],
        interval_s: float,
        partitions: Callable[[], Sequence[str]],
        device: Callable[[], str],
        *,
        labels: Sequence[str] = (),
        follows: bool = False,
    ) -> None:
        self._redis = redis
        self._names = names
        self._worker_id = worker_id
        self._models = ",".join(models)
        self._interval_s = interval_s
        self._partitions = partitions
        self._device = device
        self._labels = ",".join(sorted(labels))
        self._follows = "1" if follows else "0"
        self._state = WorkerState.STARTING
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._prune_after_ms = max(PRUNE_AFTER_MIN_MS, int(PRUNE_AFTER_INTERVALS * 1000 * interval_s))
        self._written: dict[str, str] = {}  # the fields the last successful beat left in the hash

    @property
    def state(self) -> WorkerState:
        """The state last set."""
        return self._state

    def set_models(self, models: Sequence[str]) -> None:
        """The models served now (published with the next beat)."""
        self._models = ",".join(models)

    async def start(self) -> None:
        """Publish ``starting`` and begin the periodic routine."""
        await self.beat()
        self._task = asyncio.create_task(self._beat_routine(), name=f"heartbeat-{self._worker_id}")

    async def set_state(self, state: WorkerState) -> None:
        """Change the state and publish it now."""
        self._state = state
        await self.beat()

    async def beat(self) -> bool:
        """Publish one heartbeat; False (and a warning) when Redis is unreachable."""
        ts = int(now_ms())
        fields = {
            "state": self._state.value,
            "models": self._models,
            "partitions": ",".join(sorted(self._partitions())),
            "device": self._device(),
            "labels": self._labels,
            "follows": self._follows,
            "pid": str(os.getpid()),
            "host": socket.gethostname(),
            HEARTBEAT_CAPS: CAP_BATCH,  # this worker reads batch records (schemas.envelopes.InferenceRequestBatch)
            "ts_ms": str(ts),
        }
        key = self._names.worker_key(self._worker_id)
        written, self._written = self._written, {}  # unknown what the hash holds until this beat succeeds
        changed = {k: v for k, v in fields.items() if written.get(k) != v}
        changed["ts_ms"] = fields["ts_ms"]  # always sent, even in the millisecond of the last beat: never an empty HSET
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=changed)
                pipe.pexpire(key, max(1000, int(3000 * self._interval_s)))
                pipe.zadd(self._names.workers_key, {self._worker_id: ts})
                pipe.zremrangebyscore(self._names.workers_key, "-inf", f"({ts - self._prune_after_ms}")
                added, *_ = await pipe.execute()
                if added > sum(1 for k in changed if k not in written):  # fields we left there were gone
                    await self._redis.hset(key, mapping=fields)
        except RedisError as exc:
            log.warning("heartbeat not written: %s", exc)
            return False
        self._written = fields
        return True

    async def _beat_routine(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._interval_s)
            if not self._closing.is_set():
                await self.beat()

    async def stop(self) -> None:
        """Publish ``stopped`` and end the routine (idempotent)."""
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        self._state = WorkerState.STOPPED
        if await self.beat():
            try:
                await self._redis.zrem(self._names.workers_key, self._worker_id)
            except RedisError as exc:
                log.warning("worker %s not removed from the worker index: %s", self._worker_id, exc)
