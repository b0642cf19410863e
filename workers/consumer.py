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

from aiokafka.errors import KafkaError

from common import Backoff
from schemas import FleetError, Names, SchemaError

from .artifact_cache import ArtifactCache
from .handler import Fetched
from .lane_scheduler import IDLE_AFTER_S, IDLE_POLL_MS, LaneScheduler
from .lanes import LaneConsumer
from .metrics import WorkerMetrics
from .model_serving import ModelLanes, WorkerBackends, model_thread
from .pacing import BulkPacer
from .residency_manager import ResidencyManager
from .round import BACKEND_RETRY, RoundPipeline
from .settings import WorkerSettings

log = logging.getLogger("fleet.workers")

__all__ = ["IDLE_AFTER_S", "IDLE_POLL_MS", "ModelConsumer"]


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
        self._executor = model_thread(model)
        backends = WorkerBackends.create(settings, names, redis, producer, metrics, residency, artifacts)
        serving = backends.serve(model, self._executor)
        self.cache = serving.cache
        #: What the worker publishes for the autoscaler (schemas.stats).
        self.stats = serving.stats
        self._rounds = serving.rounds
        self._pipeline = RoundPipeline(serving.rounds, settings.pipeline_depth)
        kafka = settings.fleet.kafka
        self._lanes = ModelLanes(model, names, kafka, settings.commit_interval_ms)
        self._interactive, self._bulk = self._lanes.interactive, self._lanes.bulk
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._round_lock = asyncio.Lock()
        #: Set once both lanes' groups have given this consumer an assignment (possibly empty).
        self.assigned = self._lanes.assigned
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
        await self._lanes.start(self.finish_round)
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
        await self._lanes.stop()
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

    @property
    def partitions(self) -> list[str]:
        """``topic:partition`` of the current assignment of both lanes."""
        return self._lanes.partitions

    # the routine ---------------------------------------------------------------
    async def _consume_routine(self) -> None:
        await self._lanes.wait_assigned(self._closing)  # serve nothing before both lanes are assigned
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
