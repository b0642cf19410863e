"""A worker that follows its assignment: reads ``Names.assignment_key`` every heartbeat interval and hands
each change to the worker (which starts and stops its per-model consumers); also the labels it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from common import text
from common.gpu import device_kind_of
from schemas import Names, check_model_name
from schemas.constants import GPU
from schemas.errors import SchemaError

from .settings import WorkerSettings

log = logging.getLogger("fleet.workers")

#: Starts and stops consumers so that the worker serves this set; returns what it serves afterwards.
Apply = Callable[[frozenset[str]], Awaitable[frozenset[str]]]


def worker_labels(settings: WorkerSettings) -> tuple[str, ...]:
    """The configured labels plus ``cpu`` or ``gpu`` and ``cuda:N`` (by the device) and the installed frameworks."""
    labels = set(settings.labels)
    kind = device_kind_of(settings.device)
    on_gpu = kind == GPU
    labels.add(kind)
    if on_gpu:
        labels.add(f"cuda:{settings.device.partition(':')[2] or 0}")
    for label, module in (("onnx", "onnxruntime"), ("torch", "torch")):
        if importlib.util.find_spec(module) is not None:
            labels.add(label)
    return tuple(sorted(labels))


async def read_assignment(redis: Any, names: Names, worker_id: str) -> frozenset[str]:
    """The models assigned to ``worker_id`` (illegal names are logged and skipped); raises RedisError."""
    models: set[str] = set()
    for raw in await redis.smembers(names.assignment_key(worker_id)):
        model = text(raw)
        try:
            models.add(check_model_name(model))
        except SchemaError as exc:
            log.warning("assignment of %s: %s", worker_id, exc.message)
    return frozenset(models)


class AssignmentWatcher:
    """Polls the assignment every ``interval_s`` and calls ``apply`` when it differs from the last one applied."""

    def __init__(self, redis: Any, names: Names, worker_id: str, interval_s: float, apply: Apply) -> None:
        self._redis = redis
        self._names = names
        self._worker_id = worker_id
        self._interval_s = interval_s
        self._apply = apply
        self.applied: frozenset[str] | None = None
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, applied: frozenset[str]) -> None:
        """Begin polling; ``applied`` is what the worker serves already."""
        self.applied = applied
        self._task = asyncio.create_task(self._routine(), name=f"assignment-{self._worker_id}")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The polling routine (done early only when it crashed)."""
        return self._task

    async def poll(self) -> None:
        """Read the assignment once and apply it if it changed (a Redis outage keeps the current one)."""
        try:
            wanted = await read_assignment(self._redis, self._names, self._worker_id)
        except RedisError as exc:
            log.warning("assignment of %s not read, serving what it has: %s", self._worker_id, exc)
            return
        if wanted != self.applied:
            self.applied = await self._apply(wanted)  # a model that failed to start is tried again next poll

    async def _routine(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._interval_s)
            if not self._closing.is_set():
                await self.poll()

    async def stop(self) -> None:
        """End polling; a change being applied finishes first (idempotent)."""
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
