"""One model's Kafka consumers, composed from the jobs of serving a model (the per-model worker mode).

The model has an interactive and a bulk lane (`workers.lanes`), each a consumer in its own group.
``workers.lane_scheduler`` picks each round's lane (interactive first, bounded bulk rounds, the batching
window of `workers.window`, the bulk pacing of `workers.pacing`); `workers.round` handles, delivers and
commits the round. This module owns the lifecycle: joining the groups, the consume routine, draining on
a rebalance or a stop, and the model thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from common import Backoff
from schemas import FleetError, Lane, Names, SchemaError

from .artifact_cache import ArtifactCache
from .deadletter import DeadLetterWriter
from .handler import Fetched
from .jobs import JobClaims
from .lane_scheduler import IDLE_AFTER_S, IDLE_POLL_MS, LaneScheduler
from .lanes import LaneConsumer
from .metrics import WorkerMetrics
from .model_serving import WorkerBackends
from .pacing import BulkPacer
from .replies import ReplyWriter
from .residency_manager import ResidencyManager
from .round import BACKEND_RETRY, RoundPipeline
from .settings import WorkerSettings

log = logging.getLogger("fleet.workers")

__all__ = ["IDLE_AFTER_S", "IDLE_POLL_MS", "ModelConsumer"]

#: Longest a rebalance waits for the round in hand to be delivered and committed.
_REVOKE_WAIT_S = 10.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, owner: ModelConsumer, lane: LaneConsumer) -> None:
        self._owner = owner
        self._lane = lane

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._owner.finish_round(_REVOKE_WAIT_S)
        self._lane.forget()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._lane.note_assignment(assigned)
        self._owner.note_assignment()


class ModelConsumer:
    """Serves one model: a consumer in the model's worker group, its model thread and its runtimes."""

    def __init__(
        self,
        model: str,
        settings: WorkerSettings,
        names: Names,
        redis: Any,
        producer: Any,
        metrics: WorkerMetrics,
        residency: ResidencyManager,
        artifacts: ArtifactCache,
    ) -> None:
        self.model = model
        self._settings = settings
        self._names = names
        # One thread per model: runtimes are not thread-safe, and the event loop never runs a model.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{model}")
        backends = WorkerBackends(
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
        serving = backends.serve(model, self._executor)
        self.cache = serving.cache
        #: What the worker publishes for the autoscaler (schemas.stats).
        self.stats = serving.stats
        self._rounds = serving.rounds
        self._pipeline = RoundPipeline(serving.rounds, settings.pipeline_depth)
        kafka = settings.fleet.kafka
        self._interactive = LaneConsumer(model, Lane.INTERACTIVE, names, kafka)
        self._bulk = LaneConsumer(model, Lane.BULK, names, kafka)
        self._lanes = (self._interactive, self._bulk)
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._round_lock = asyncio.Lock()
        #: Set once both lanes' groups have given this consumer an assignment (possibly empty).
        self.assigned = asyncio.Event()
        self._scheduler = LaneScheduler(
            self._interactive,
            self._bulk,
            max_fetch_records=settings.max_fetch_records,
            bulk_max_batch=settings.bulk_max_batch,
            pacer=BulkPacer(settings.bulk_share),
            batching_hint=self.cache.batching_hint,
            closing=self._closing.is_set,
            on_in_hand=self._set_in_hand,
            busy_fetch_wait_ms=kafka.fetch_max_wait_ms,
            idle_fetch_wait_ms=settings.idle_fetch_wait_ms,
        )

    def _set_in_hand(self, count: int) -> None:
        self.stats.in_hand = count + self._rounds.in_hand  # the round being collected and those in flight

    # lifecycle -------------------------------------------------------------
    async def preload(self) -> None:
        """Load the default version now unless the memory budget is full (failures only log)."""
        try:
            record = await self.cache.default_record()
            await self.cache.preload(record)
        except (FleetError, SchemaError) as exc:
            log.warning("model %s not preloaded: %s", self.model, exc)

    async def start(self) -> None:
        """Join the model's worker groups (one per lane) and start the consume routine."""
        # The lanes join their groups concurrently: a join takes ~1 s on the local broker, and the interactive
        # lane must not wait for the bulk lane's join before it serves.
        started = await asyncio.gather(
            *(lane.start(_Rebalance(self, lane)) for lane in self._lanes), return_exceptions=True
        )
        failures = [r for r in started if isinstance(r, BaseException)]
        if failures:
            for lane in self._lanes:
                await lane.stop()
            raise failures[0]
        self._task = asyncio.create_task(self._consume_routine(), name=f"consume-{self.model}")

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The model thread (runtimes are not thread-safe: every load, batch and unload runs there)."""
        return self._executor

    @property
    def pipeline(self) -> RoundPipeline:
        """The rounds in flight (``FLEET_WORKER_PIPELINE_DEPTH`` at most)."""
        return self._pipeline

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The consume routine (done early only when it crashed)."""
        return self._task

    def request_stop(self) -> None:
        """Stop fetching; the rounds in hand are still finished, delivered and committed."""
        self._closing.set()

    async def stop(self, timeout_s: float) -> None:
        """Drain within ``timeout_s`` (then cancel the round), leave the group, release the model."""
        self.request_stop()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                log.warning(
                    "model %s: round not finished after %.1fs; cancelling (it will be redelivered)",
                    self.model,
                    timeout_s,
                )
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for lane in self._lanes:
            await lane.stop()  # leaves the group: partitions move without waiting for a timeout
        await self.cache.close()
        # Off the event loop: a batch still on the model thread must not stop every other model's rounds.
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    # rebalance hooks -----------------------------------------------------------
    async def finish_round(self, timeout_s: float) -> None:
        """Wait (bounded) for the round in hand and the commits in flight, so they land before partitions move."""
        try:
            await asyncio.wait_for(self._round_lock.acquire(), timeout_s)
        except TimeoutError:
            log.warning("model %s: rebalance proceeds with a round still in hand", self.model)
            return
        try:
            await asyncio.wait_for(self._pipeline.wait_idle(), timeout_s)
        except TimeoutError:
            log.warning("model %s: rebalance proceeds with rounds still in flight", self.model)
        try:
            await asyncio.wait_for(asyncio.gather(*(lane.flush_commits() for lane in self._lanes)), timeout_s)
        except TimeoutError:
            log.warning("model %s: rebalance proceeds with a commit still in flight", self.model)
        finally:
            self._round_lock.release()

    def note_assignment(self) -> None:
        """A lane got an assignment; the consumer is assigned once both lanes are."""
        if all(lane.assigned_once for lane in self._lanes):
            self.assigned.set()

    @property
    def partitions(self) -> list[str]:
        """``topic:partition`` of the current assignment of both lanes."""
        return [p for lane in self._lanes for p in lane.partitions]

    # the routine ---------------------------------------------------------------
    async def _consume_routine(self) -> None:
        # Serve nothing before both lanes are assigned: a lane that joins first must not get ahead.
        waits = {asyncio.ensure_future(self._closing.wait()), asyncio.ensure_future(self.assigned.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in waits:
                future.cancel()
        pipeline = self._pipeline
        backoff = Backoff(BACKEND_RETRY)
        try:
            while not self._closing.is_set():
                await pipeline.ready()  # raises when a round crashed
                if self._closing.is_set():
                    break
                try:
                    fetched, taken_from = await self._scheduler.collect(
                        pipeline.model_idle if pipeline.depth > 1 else None
                    )
                except KafkaError as exc:
                    pause = backoff.next()
                    log.warning("model %s: fetch failed (%s); retrying in %.2fs", self.model, exc, pause)
                    await asyncio.sleep(pause)
                    continue
                backoff.reset()
                if fetched:
                    lane = self._interactive if taken_from is self._interactive else self._bulk
                    async with self._round_lock:  # a rebalance holds it while the rounds in flight finish
                        self._submit(fetched, lane)
            await pipeline.drain()  # a stop: every round in hand is delivered and committed
        finally:
            await pipeline.cancel()  # only when the drain was cancelled or a round crashed: redelivered

    def _submit(self, fetched: list[Fetched], lane: LaneConsumer) -> None:
        on_done = self._note_bulk_round if lane is self._bulk else None
        self._pipeline.submit(fetched, lane.lane, lane.retry_topic, lane.commit_soon, on_done)

    def _note_bulk_round(self, busy_s: float) -> None:
        self._scheduler.pacer.note_bulk_round(busy_s, time.monotonic())
