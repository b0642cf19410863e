"""A worker that follows its assignment: reads ``Names.assignment_key`` when the placement scheduler's news
names it (``Names.assignments_channel``) and every heartbeat interval, and hands each change to the worker
(which starts and stops its per-model consumers, or its pool's models); also the labels it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from common import supervise, text
from common.channel import listen_routine
from common.gpu import device_kind_of
from schemas import Names, check_model_name
from schemas.assignment_news import AssignmentNews, NewsKind
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
    """Applies the assignment when it changes: at once on news naming this worker (`schemas.assignment_news`
    on ``Names.assignments_channel``, a supervised listener), and every ``interval_s`` in case news was lost.

    News that names this worker while its assignment did not change (the replicas of a model it serves
    moved) calls ``refresh`` instead: a pool worker takes its partition ownership again at once. Once
    subscribed (each time) the watcher announces that this worker joined (the scheduler places it at once)
    and reads the assignment again, which catches up on news missed before.
    """

    def __init__(
        self,
        redis: Any,
        names: Names,
        worker_id: str,
        interval_s: float,
        apply: Apply,
        *,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self._names = names
        self._worker_id = worker_id
        self._interval_s = interval_s
        self._apply = apply
        self._refresh = refresh
        self.applied: frozenset[str] | None = None
        #: News or a stop arrived: the routine acts now rather than at the end of its interval.
        self._wake = asyncio.Event()
        self._named = False  # news named this worker since the last read
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None

    def start(self, applied: frozenset[str]) -> None:
        """Begin listening and polling; ``applied`` is what the worker serves already."""
        self.applied = applied
        self._task = asyncio.create_task(self._routine(), name=f"assignment-{self._worker_id}")
        listen = functools.partial(
            listen_routine,
            self._redis,
            self._names.assignments_channel,
            self._on_news,
            log,
            on_subscribed=self._subscribed,
            stop=self._closing,
        )
        self._listener = asyncio.create_task(
            supervise("assignment news", listen, log, stop=self._closing), name=f"assignment-news-{self._worker_id}"
        )

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The polling routine (done early only when it crashed)."""
        return self._task

    def _on_news(self, raw: bytes) -> None:
        try:
            news = AssignmentNews.from_bytes(raw)
        except SchemaError as exc:
            log.warning("assignment news ignored: %s", exc.message)
            return
        if news.kind is NewsKind.ASSIGNED and news.names(self._worker_id):
            self._named = True
            self._wake.set()

    async def _subscribed(self) -> None:
        """Subscribed (again): say this worker joined, and read the assignment now (news may have been missed)."""
        await self._redis.publish(self._names.assignments_channel, AssignmentNews.joined(self._worker_id).to_bytes())
        self._named = True
        self._wake.set()

    async def poll(self) -> None:
        """Read the assignment once and apply it if it changed (a Redis outage keeps the current one)."""
        named, self._named = self._named, False
        try:
            wanted = await read_assignment(self._redis, self._names, self._worker_id)
        except RedisError as exc:
            log.warning("assignment of %s not read, serving what it has: %s", self._worker_id, exc)
            return
        if wanted != self.applied:
            self.applied = await self._apply(wanted)  # a model that failed to start is tried again next poll
        elif named and self._refresh is not None:
            await self._refresh()

    async def _routine(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            if not self._closing.is_set():
                await self.poll()

    async def stop(self) -> None:
        """End listening and polling; a change being applied finishes first (idempotent)."""
        self._closing.set()
        self._wake.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
        task, self._task = self._task, None
        await asyncio.gather(*(t for t in (task, listener) if t is not None), return_exceptions=True)
