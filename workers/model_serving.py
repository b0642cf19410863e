"""The parts that serve one model, wired the same way in every worker mode: its cache of loaded versions, its
stats, and the round runner (handler with the retry policy, replies, dead letters); and, for the consumers that
serve one model each (``workers.consumer``, ``workers.generation.consumer``), its model thread and its two
lanes' consumers with their rebalance listener."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRebalanceListener

from schemas import KafkaSettings, Lane, ModelRegistry, Names
from schemas.load_failures import LoadFailures
from schemas.topics import BulkTopics

from .artifact_cache import ArtifactCache
from .deadletter import DeadLetterWriter
from .handler import RequestHandler
from .jobs import JobClaims
from .lanes import LaneConsumer
from .metrics import WorkerMetrics
from .models import ModelCache
from .replies import ReplyWriter
from .residency_manager import ResidencyManager
from .retries import RetryPolicy
from .round import RoundRunner
from .settings import WorkerSettings
from .stats import ModelStats
from .steps import StepRouter, step_metrics


@dataclass(frozen=True, slots=True)
class ModelServing:
    """One model's cache, stats and round runner."""

    cache: ModelCache
    stats: ModelStats
    rounds: RoundRunner


@dataclass(frozen=True, slots=True)
class WorkerBackends:
    """What every model of a worker shares: its clients, writers, metrics, memory budget and artifact cache."""

    settings: WorkerSettings
    names: Names
    redis: Any
    producer: Any
    metrics: WorkerMetrics
    residency: ResidencyManager
    artifacts: ArtifactCache
    claims: JobClaims
    replies: ReplyWriter
    dead_letters: DeadLetterWriter

    @classmethod
    def create(
        cls,
        settings: WorkerSettings,
        names: Names,
        redis: Any,
        producer: Any,
        metrics: WorkerMetrics,
        residency: ResidencyManager,
        artifacts: ArtifactCache,
    ) -> WorkerBackends:
        """The shared parts, with the job claims, reply writer and dead-letter writer made on these clients."""
        return cls(
            settings,
            names,
            redis,
            producer,
            metrics,
            residency,
            artifacts,
            JobClaims(redis, names, settings.worker_id),
            ReplyWriter.configured(redis, names, producer, settings.fleet.redis),
            DeadLetterWriter(producer, names),
        )

    def model_cache(self, model: str, executor: Executor) -> ModelCache:
        """The cache of ``model``'s loaded versions, whose loads run on ``executor``."""
        return ModelCache(
            model,
            ModelRegistry(self.redis, self.names),
            executor,
            self.settings,
            self.residency,
            self.artifacts,
            LoadFailures(self.redis, self.names, self.settings.worker_id),
        )

    def serve(self, model: str, executor: Executor) -> ModelServing:
        """The serving parts of ``model``, whose loads and batches run on ``executor``."""
        settings, worker_id = self.settings, self.settings.worker_id
        cache = self.model_cache(model, executor)
        stats = ModelStats()
        retry = RetryPolicy(
            settings.retry_attempts, settings.retry_base_ms, settings.retry_max_ms, settings.retry_jitter
        )
        handler = RequestHandler(model, cache, executor, worker_id, self.metrics, stats, self.claims, retry)
        # The rounds' reply writer also passes pipeline steps' answers on to the next steps (workers.steps).
        replies = StepRouter(
            model,
            self.redis,
            self.names,
            self.producer,
            self.dead_letters,
            step_metrics(self.metrics.registry),
            worker_id,
            BulkTopics(settings.fleet.kafka, self.names),
        )
        rounds = RoundRunner(model, handler, self.producer, replies, self.dead_letters, self.metrics, stats)
        return ModelServing(cache, stats, rounds)


#: Longest a rebalance waits for the work in hand to be answered and committed before partitions move.
REVOKE_WAIT_S = 10.0


def model_thread(model: str) -> ThreadPoolExecutor:
    """The thread of a model served on its own: runtimes are not thread-safe, and the event loop never runs one."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{model}")


class ModelLanes:
    """One model's interactive and bulk lane consumers (``workers.lanes``), each in its own group, joined and
    left together; ``assigned`` is set once both groups have given an assignment (possibly empty). Each lane
    commits at most once per ``commit_interval_ms`` (`LaneConsumer.commit_soon`)."""

    def __init__(self, model: str, names: Names, kafka: KafkaSettings, commit_interval_ms: int = 0) -> None:
        self.interactive = LaneConsumer(model, Lane.INTERACTIVE, names, kafka, commit_interval_ms)
        self.bulk = LaneConsumer(model, Lane.BULK, names, kafka, commit_interval_ms)
        self.assigned = asyncio.Event()

    def __iter__(self) -> Iterator[LaneConsumer]:
        return iter((self.interactive, self.bulk))

    @property
    def partitions(self) -> list[str]:
        """``topic:partition`` of both lanes' current assignments."""
        return [p for lane in self for p in lane.partitions]

    async def start(self, finish_round: Callable[[float], Awaitable[None]]) -> None:
        """Join both groups; before a lane's partitions are revoked, ``finish_round(REVOKE_WAIT_S)`` lets the
        work in hand be answered and committed. Neither lane is left joined when either fails to join."""
        # Concurrently: a join takes ~1 s on the local broker, and the interactive lane must not wait for the bulk
        # lane's join before it serves.
        started = await asyncio.gather(
            *(lane.start(_Rebalance(self, lane, finish_round)) for lane in self), return_exceptions=True
        )
        failures = [r for r in started if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]

    async def stop(self) -> None:
        """Leave both groups: partitions move without waiting for a session timeout."""
        for lane in self:
            await lane.stop()

    async def wait_assigned(self, closing: asyncio.Event) -> None:
        """Wait until both lanes are assigned or ``closing`` is set: a lane that joins first must not get ahead."""
        waits = {asyncio.ensure_future(closing.wait()), asyncio.ensure_future(self.assigned.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in waits:
                future.cancel()

    def note_assignment(self) -> None:
        """A lane got an assignment; both are assigned once each has had one."""
        if all(lane.assigned_once for lane in self):
            self.assigned.set()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, lanes: ModelLanes, lane: LaneConsumer, finish_round: Callable[[float], Awaitable[None]]) -> None:
        self._lanes = lanes
        self._lane = lane
        self._finish_round = finish_round

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._finish_round(REVOKE_WAIT_S)
        self._lane.forget()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._lane.note_assignment(assigned)
        self._lanes.note_assignment()
