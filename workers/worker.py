"""The worker: one consumer per served model, a heartbeat, service stats, a dead-letter producer and metrics.

Lifecycle: ``start()`` connects to Redis and Kafka, loads the models (``preload``), joins the groups
and starts the routines; ``stop()`` drains (stop fetching, finish the round in hand, deliver, commit,
leave the groups) within ``drain_timeout_s`` and closes everything. ``run_until_stopped()`` waits for
``request_stop()`` (the signal handlers of ``python -m workers`` call it) or for a routine to crash,
which it re-raises as a WorkerError.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from schemas import FleetError, Names, SchemaError
from schemas.eventloop import AsyncService
from schemas.key_migrator import warn_if_old_layout
from schemas.topics import ensure_model_topics

from . import proctitle
from .artifact_cache import ArtifactCache, default_cache_dir
from .assignment import Apply, AssignmentWatcher, read_assignment, worker_labels
from .consumer import ModelConsumer
from .errors import BackendDownError, WorkerError, start_kafka_client
from .generation import GenerationConsumer, generative_models
from .heartbeat import Heartbeat, WorkerState
from .metrics import WorkerMetrics
from .pool import PoolConsumer
from .residency_manager import ResidencyManager, worker_capacity
from .residency_metrics import ResidencyMetrics
from .settings import WorkerSettings
from .stats import ModelStats, StatsPublisher

log = logging.getLogger("fleet.workers")


class _Lifecycle(Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Worker(AsyncService):
    """Serves ``settings.models`` (or its assignment, when following one) until stopped.

    Use ``async with Worker(settings) as w: await w.wait_ready()``. ``process_title``: keep the process's
    title on what it serves (`workers.proctitle`); only a process that is the worker (``python -m workers``)
    asks for it, never one that embeds a worker (an application, the tests).
    """

    def __init__(self, settings: WorkerSettings, *, names: Names | None = None, process_title: bool = False) -> None:
        self.settings = settings
        self._process_title = process_title
        self.names = names or Names(settings.fleet.namespace)
        self.metrics = WorkerMetrics()
        capacity = worker_capacity(settings.memory_budget_mb, settings.overcommit_pct, settings.device)
        #: The resident models under the memory budget (shared by every model's cache).
        self.residency = ResidencyManager(
            capacity, ResidencyMetrics(self.metrics.registry), self.names, self.id, settings.heartbeat_interval_s
        )
        self._artifacts = ArtifactCache(
            settings.cache_dir or default_cache_dir(), download_timeout_s=settings.download_timeout_s
        )
        self._lifecycle = _Lifecycle.NEW
        self._redis: Any = None
        self._producer: AIOKafkaProducer | None = None
        self._consumers: list[ModelConsumer] = []
        self._pool: PoolConsumer | None = None  # FLEET_WORKER_MODE=pool: one consumer for every model
        self._heartbeat: Heartbeat | None = None
        self._stats: StatsPublisher | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None
        self._failure: WorkerError | None = None
        self._watcher: AssignmentWatcher | None = None
        self._retired: set[asyncio.Task[None]] = set()  # routines of consumers stopped by an assignment change
        self._generative: set[str] = set()  # text-generation models: served on their own path (workers.generation)

    @property
    def id(self) -> str:
        """The worker id (names its heartbeat hash)."""
        return self.settings.worker_id

    @property
    def consumers(self) -> list[ModelConsumer]:
        """One consumer per served model (empty in pool mode)."""
        return list(self._consumers)

    @property
    def pool(self) -> PoolConsumer | None:
        """The multiplexed consumer of every served model (pool mode only)."""
        return self._pool

    # lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Connect, load, join the groups and start serving; raises WorkerError (or a FleetError)."""
        if self._lifecycle is not _Lifecycle.NEW:
            raise WorkerError(f"a Worker cannot be started when it is {self._lifecycle.value}")
        self._lifecycle = _Lifecycle.RUNNING
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings, fleet = self.settings, self.settings.fleet
        self._redis = fleet.redis.client()
        await warn_if_old_layout(self._redis, self.names, log)
        models = settings.models
        if settings.follow_assignment:
            try:
                models = tuple(sorted(await read_assignment(self._redis, self.names, self.id)))
            except RedisError as exc:
                raise BackendDownError(f"Redis unavailable, assignment of {self.id} not read: {exc}") from exc
        self._heartbeat = Heartbeat(
            self._redis,
            self.names,
            self.id,
            models,
            settings.heartbeat_interval_s,
            self._partitions,
            self._device,
            labels=worker_labels(settings),
            follows=settings.follow_assignment,
        )
        await self._heartbeat.start()
        if settings.mode == "pool":
            await self._start_pool(models)
            return
        for model in models:
            try:
                # bulk=True: the bulk lane subscribes by name, and that would auto-create a missing bulk topic
                # with the broker's default partition count (created here with the request topic's count).
                await ensure_model_topics(fleet.kafka, self.names, model, bulk=True)
            except FleetError as exc:
                log.warning("could not check the topics of %s: %s", model, exc.message)
        producer = AIOKafkaProducer(**fleet.kafka.producer_kwargs())
        await start_kafka_client(producer, fleet.kafka.bootstrap)
        self._producer = producer
        self._generative = await generative_models(self._redis, self.names, models)
        self._consumers = [self._new_consumer(model) for model in models]
        if not settings.follow_assignment:  # the scheduler keeps assignments within budget x (1 + overcommit)
            await self._check_capacity()
        await self.residency.start(self._redis)
        if settings.preload:
            for consumer in self._consumers:  # in order, while they fit: loads go one at a time anyway
                await consumer.preload()
        for consumer in self._consumers:
            await consumer.start()
            if consumer.task is not None:
                consumer.task.add_done_callback(self._routine_done)
        await self._start_routines(
            models,
            lambda: {c.model: c.stats for c in self._consumers},
            lambda: sorted({d for c in self._consumers for d in c.cache.devices}),
            self._apply_assignment,
        )
        log.info("worker %s serving %s", self.id, ",".join(models) or "(nothing assigned yet)")

    async def _start_routines(
        self,
        models: tuple[str, ...],
        stats: Callable[[], dict[str, ModelStats]],
        devices: Callable[[], Sequence[str]],
        apply: Apply,
    ) -> None:
        """What both modes run beside their consumers: service stats, the assignment watcher (when following),
        the readiness routine and the metrics endpoint."""
        settings = self.settings
        self._stats = StatsPublisher(self._redis, self.names, self.id, stats, devices, settings.heartbeat_interval_s)
        await self._stats.start()
        if settings.follow_assignment:
            # News naming a pool worker whose models did not change: the replicas moved, take ownership again.
            refresh = self._pool.refresh if self._pool is not None else None
            self._watcher = AssignmentWatcher(
                self._redis, self.names, self.id, settings.heartbeat_interval_s, apply, refresh=refresh
            )
            self._watcher.start(frozenset(models))
            if self._watcher.task is not None:
                self._watcher.task.add_done_callback(self._routine_done)
        self._ready_task = asyncio.create_task(self._ready_routine(), name=f"ready-{self.id}")
        if settings.metrics_port > 0:
            self.metrics.serve(settings.metrics_port)

    async def _start_pool(self, models: tuple[str, ...]) -> None:
        """Pool mode: the topics exist from registration; one consumer serves every model, loaded on first use."""
        settings, fleet = self.settings, self.settings.fleet
        producer = AIOKafkaProducer(**fleet.kafka.producer_kwargs())
        await start_kafka_client(producer, fleet.kafka.bootstrap)
        self._producer = producer
        await self.residency.start(self._redis)
        pool = self._pool = PoolConsumer(
            settings, self.names, self._redis, producer, self.metrics, self.residency, self._artifacts
        )
        await pool.start(models)
        for task in pool.tasks:
            task.add_done_callback(self._routine_done)
        await self._start_routines(models, pool.stats, pool.devices, self._apply_pool_assignment)
        log.info("worker %s serving %d model(s) in pool mode", self.id, len(models))

    async def _apply_pool_assignment(self, wanted: frozenset[str]) -> frozenset[str]:
        assert self._pool is not None
        served = await self._pool.set_models(wanted)
        if self._heartbeat is not None:
            self._heartbeat.set_models(sorted(served))
            await self._heartbeat.beat()
        return served

    def _new_consumer(self, model: str) -> ModelConsumer:
        assert self._producer is not None
        if model in self._generative:  # the same interface as far as the worker goes
            parts = (self.settings, self.names, self._redis, self._producer, self.metrics, self.residency)
            return cast(ModelConsumer, GenerationConsumer(model, *parts, self._artifacts))
        return ModelConsumer(
            model, self.settings, self.names, self._redis, self._producer, self.metrics, self.residency, self._artifacts
        )

    async def _apply_assignment(self, wanted: frozenset[str]) -> frozenset[str]:
        """Stop the consumers of models no longer assigned (drain, leave the groups, release the model),
        start those of newly assigned ones; returns the models served afterwards."""
        leaving = [c for c in self._consumers if c.model not in wanted]
        for consumer in leaving:
            self._consumers.remove(consumer)
            if consumer.task is not None:
                self._retired.add(consumer.task)
            await consumer.stop(self.settings.drain_timeout_s)
            log.info("worker %s stopped serving %s (unassigned)", self.id, consumer.model)
        served = {c.model for c in self._consumers}
        self._generative |= await generative_models(self._redis, self.names, sorted(wanted - served))
        for model in sorted(wanted - served):
            if self._stop_requested.is_set():
                break
            consumer = self._new_consumer(model)
            try:
                await ensure_model_topics(self.settings.fleet.kafka, self.names, model, bulk=True)
                if self.settings.preload:
                    await consumer.preload()
                await consumer.start()
            except (FleetError, KafkaError) as exc:
                log.error("worker %s could not start serving %s (retried next poll): %s", self.id, model, exc)
                await consumer.stop(0)
                continue
            if consumer.task is not None:
                consumer.task.add_done_callback(self._routine_done)
            self._consumers.append(consumer)
            log.info("worker %s started serving %s (assigned)", self.id, model)
        models = sorted(c.model for c in self._consumers)
        if self._heartbeat is not None:
            self._heartbeat.set_models(models)
            await self._heartbeat.beat()
        return frozenset(models)

    async def _check_capacity(self) -> None:
        """Refuse to serve models whose sizes add up to more than budget x (1 + overcommit).

        A model that alone exceeds the budget does not count: it can never be resident and its requests
        get MODEL_LOAD_FAILED replies that say so, while the other models serve.
        """
        capacity = self.residency.capacity
        if capacity.budget_bytes is None:
            return
        sizes: dict[str, int] = {}
        for consumer in self._consumers:
            try:
                record = await consumer.cache.default_record()
            except (FleetError, SchemaError):
                continue  # not registered yet: its requests will say so
            size = consumer.cache.size_of(record)
            too_large = capacity.too_large(size)
            if too_large is None:
                sizes[consumer.model] = size
            else:
                log.error("model %s can never be resident on worker %s: %s", consumer.model, self.id, too_large)
        reason = capacity.overcommitted(sizes)
        if reason is not None:
            raise WorkerError(
                f"worker {self.id}: {reason}; serve fewer models or raise FLEET_WORKER_MEMORY_BUDGET_MB or "
                "FLEET_WORKER_OVERCOMMIT_PCT"
            )

    async def _ready_routine(self) -> None:
        await asyncio.gather(*(c.assigned.wait() for c in self._consumers))
        if self._pool is not None:
            await self._pool.ready.wait()
        if self._heartbeat is not None and not self._stop_requested.is_set():
            await self._heartbeat.set_state(WorkerState.READY)
        self._ready.set()
        log.info("worker %s ready", self.id)
        if self._process_title:
            await proctitle.keep_title(self, self.settings.heartbeat_interval_s)  # `ps` shows what it serves

    def _routine_done(self, task: asyncio.Task[None]) -> None:
        retired = task in self._retired
        self._retired.discard(task)
        if task.cancelled() or task.exception() is None and (self._stop_requested.is_set() or retired):
            return
        exc = task.exception()
        self._failure = WorkerError(f"{task.get_name()} crashed: {exc!r}")
        log.error("%s crashed; stopping the worker", task.get_name(), exc_info=exc)
        self._stop_requested.set()

    def request_stop(self) -> None:
        """Ask for a graceful stop (safe from a signal handler); ``run_until_stopped`` then drains."""
        self._stop_requested.set()

    async def run_until_stopped(self) -> None:
        """Serve until ``request_stop()`` or a crash, then drain; re-raises a routine crash as WorkerError."""
        await self._stop_requested.wait()
        await self.stop()
        if self._failure is not None:
            raise self._failure

    # The contract (docs/ARCHITECTURE.md) spells it wait_ready(timeout); asyncio.timeout would not read better.
    async def wait_ready(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until every consumer has joined its group and received an assignment."""
        ready = asyncio.ensure_future(self._ready.wait())
        stopped = asyncio.ensure_future(self._stop_requested.wait())
        try:
            done, _ = await asyncio.wait({ready, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            stopped.cancel()
        if self._ready.is_set():
            return
        if self._failure is not None:
            raise self._failure
        if not done:
            raise TimeoutError(f"worker {self.id} not ready after {timeout}s")
        raise WorkerError(f"worker {self.id} stopped before it was ready")

    async def stop(self) -> None:
        """Drain and close (idempotent; concurrent callers wait for the same drain)."""
        if self._lifecycle is _Lifecycle.NEW:
            self._lifecycle = _Lifecycle.STOPPED
            return
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._shutdown(), name=f"stop-{self.id}")
        await asyncio.shield(self._stop_task)

    async def _shutdown(self) -> None:
        self._lifecycle = _Lifecycle.STOPPING
        self._stop_requested.set()
        heartbeat = self._heartbeat
        if heartbeat is not None:
            await heartbeat.set_state(WorkerState.DRAINING)
        if self._watcher is not None:
            await self._watcher.stop()  # a change being applied finishes before the consumers stop
        if self._ready_task is not None:
            self._ready_task.cancel()
            await asyncio.gather(self._ready_task, return_exceptions=True)
        for consumer in self._consumers:
            consumer.request_stop()
        await asyncio.gather(*(c.stop(self.settings.drain_timeout_s) for c in self._consumers))
        if self._pool is not None:
            await self._pool.stop(self.settings.drain_timeout_s)
        await self.residency.stop()
        if self._stats is not None:
            await self._stats.stop()
        if self._producer is not None:
            try:
                await self._producer.stop()
            except KafkaError as exc:
                log.warning("closing the dead-letter producer failed: %s", exc)
        if heartbeat is not None:
            await heartbeat.stop()
        if self._redis is not None:
            await self._redis.aclose()
        self.metrics.close()
        self._lifecycle = _Lifecycle.STOPPED
        log.info("worker %s stopped", self.id)

    # heartbeat sources --------------------------------------------------------
    def _partitions(self) -> list[str]:
        pool = self._pool.partitions if self._pool is not None else []
        return [p for consumer in self._consumers for p in consumer.partitions] + pool

    def _device(self) -> str:
        devices = sorted({d for consumer in self._consumers for d in consumer.cache.devices})
        if self._pool is not None:
            devices = self._pool.devices()
        return ",".join(devices) or self.settings.device
