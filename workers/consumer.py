"""One model's Kafka consumer: fetch with a dynamic-batching window, handle, deliver, then commit.

Each round: wait (blocking, no busy loop) for the first records; keep fetching until the model's
``max_batch_size`` rows are in hand or ``max_queue_delay_ms`` has passed since the first record; let
the handler answer every record; deliver all replies in one Redis round trip and produce the dead
letters; only then commit the offsets of exactly those records. If Redis or Kafka is down, delivery is
retried with backoff and nothing is committed until it succeeds (``stop()`` gives up after the drain
timeout, leaving the records to be redelivered).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from schemas import BackendUnavailableError, FleetError, ModelRegistry, Names, SchemaError, now_ms

from .batching import request_rows
from .deadletter import DeadLetterWriter
from .errors import BackendDownError, WorkerError
from .handler import Fetched, RequestHandler, RoundOutcome, decode
from .jobs import JobClaims
from .metrics import WorkerMetrics
from .models import ModelCache
from .replies import ReplyWriter
from .settings import WorkerSettings
from .stats import ModelStats

log = logging.getLogger("fleet.workers")

#: Longest one idle fetch waits before the routine checks whether it should stop.
IDLE_POLL_MS = 200
#: Seconds without records after which the consumer switches to the idle fetch wait.
IDLE_AFTER_S = 1.0
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0
#: Longest a rebalance waits for the round in hand to be delivered and committed.
_REVOKE_WAIT_S = 10.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, owner: ModelConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._owner.finish_round(_REVOKE_WAIT_S)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._owner.note_assignment(assigned)


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
    ) -> None:
        self.model = model
        self._settings = settings
        self._names = names
        # One thread per model: runtimes are not thread-safe, and the event loop never runs a model.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{model}")
        self.cache = ModelCache(
            model, ModelRegistry(redis, names), self._executor, settings.device, settings.intra_op_threads
        )
        #: What the worker publishes for the autoscaler (schemas.stats).
        self.stats = ModelStats()
        claims = JobClaims(redis, names, settings.worker_id)
        self._handler = RequestHandler(
            model, self.cache, self._executor, settings.worker_id, metrics, self.stats, claims
        )
        self._replies = ReplyWriter(redis, names, producer)
        self._dead_letters = DeadLetterWriter(producer, names)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._round_lock = asyncio.Lock()
        #: Set once the group has given this consumer an assignment (possibly empty).
        self.assigned = asyncio.Event()
        self._partitions: list[str] = []
        self._last_records = time.monotonic()
        self._idle = False

    # lifecycle -------------------------------------------------------------
    async def preload(self) -> None:
        """Load the default version now, so the first request does not pay for it (failures only log)."""
        try:
            record = await self.cache.default_record()
            await self.cache.runtime(record)
        except (FleetError, SchemaError) as exc:
            log.warning("model %s not preloaded: %s", self.model, exc)

    async def start(self) -> None:
        """Join the model's worker group and start the consume routine."""
        kafka = self._settings.fleet.kafka
        consumer = AIOKafkaConsumer(**kafka.consumer_kwargs(self._names.worker_group(self.model)))
        consumer.subscribe([self._names.request_topic(self.model)], listener=_Rebalance(self))
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            raise BackendDownError(f"Kafka unavailable at {kafka.bootstrap}: {exc}") from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._consume_routine(), name=f"consume-{self.model}")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The consume routine (done early only when it crashed)."""
        return self._task

    def request_stop(self) -> None:
        """Stop fetching; the round in hand is still finished, delivered and committed."""
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
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.stop()  # leaves the group: partitions move without waiting for a timeout
            except KafkaError as exc:
                log.warning("model %s: leaving the group failed: %s", self.model, exc)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.cache.unload_all)
        self._executor.shutdown(wait=True)

    # rebalance hooks -----------------------------------------------------------
    async def finish_round(self, timeout_s: float) -> None:
        """Wait (bounded) for the round in hand, so its commit lands before partitions move."""
        try:
            await asyncio.wait_for(self._round_lock.acquire(), timeout_s)
        except TimeoutError:
            log.warning("model %s: rebalance proceeds with a round still in hand", self.model)
            return
        self._round_lock.release()

    def note_assignment(self, assigned: Any) -> None:
        """Record the partitions the group gave us."""
        self._partitions = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)
        log.info("model %s: assigned %s", self.model, ",".join(self._partitions) or "no partitions")
        self.assigned.set()

    @property
    def partitions(self) -> list[str]:
        """``topic:partition`` of the current assignment."""
        return list(self._partitions)

    # the routine ---------------------------------------------------------------
    async def _consume_routine(self) -> None:
        backoff = _BACKOFF_MIN_S
        while not self._closing.is_set():
            try:
                fetched = await self._collect()
            except KafkaError as exc:
                log.warning("model %s: fetch failed (%s); retrying in %.2fs", self.model, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = _BACKOFF_MIN_S
            if fetched:
                async with self._round_lock:
                    await self._run_round(fetched)

    async def _collect(self) -> list[Fetched]:
        """Records of one round: the first fetch, then more until the batch is full or the window closes."""
        consumer = self._consumer
        if consumer is None:
            raise WorkerError("consumer not started")
        limit = self._settings.max_fetch_records
        fetched = self._decode(await consumer.getmany(timeout_ms=IDLE_POLL_MS, max_records=limit))
        self.stats.in_hand = len(fetched)
        first = time.monotonic()
        if not fetched:
            if not self._idle and first - self._last_records > IDLE_AFTER_S:
                self._set_idle(True)
            return fetched
        self._last_records = first
        if self._idle:
            self._set_idle(False)
        version = next((f.request.version for f in fetched if f.request is not None), None)
        batching = self.cache.batching_hint(version)
        if batching is None or batching.max_batch_size <= 1:
            return fetched
        deadline = first + batching.max_queue_delay_ms / 1000
        rows = sum(request_rows(f.request) for f in fetched if f.request is not None)
        while rows < batching.max_batch_size and len(fetched) < limit and not self._closing.is_set():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            more = self._decode(await consumer.getmany(timeout_ms=remaining_ms, max_records=limit - len(fetched)))
            fetched.extend(more)
            self.stats.in_hand = len(fetched)
            rows += sum(request_rows(f.request) for f in more if f.request is not None)
        return fetched

    def _set_idle(self, idle: bool) -> None:
        """Lengthen the fetch wait while idle, restore it when records flow.

        A broker that does not wake a waiting fetch when data arrives (the local Tansu broker) makes
        the fetch wait the latency floor, so it is kept short under load; idle, the same short wait
        means a fetch round trip every few milliseconds for nothing. aiokafka reads the wait from its
        fetcher for every request, and has no public setter: the attribute is only touched when present.
        """
        self._idle = idle
        idle_wait = self._settings.idle_fetch_wait_ms
        fetcher = getattr(self._consumer, "_fetcher", None)
        if idle_wait <= 0 or fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
            return
        busy_wait = self._settings.fleet.kafka.fetch_max_wait_ms
        fetcher._fetch_max_wait_ms = max(busy_wait, idle_wait) if idle else busy_wait

    @staticmethod
    def _decode(data: dict[Any, list[Any]]) -> list[Fetched]:
        return [decode(record) for records in data.values() for record in records]

    async def _run_round(self, fetched: Sequence[Fetched]) -> None:
        began = time.perf_counter()
        outcome = await self._retrying("handle", lambda: self._handler.handle(fetched))
        await self._retrying("deliver", lambda: self._deliver(outcome))
        delivered_ms = now_ms()
        self.stats.in_hand = 0
        await self._commit(fetched)
        latencies = [delivered_ms - f.request.created_ms for f in fetched if f.request is not None]
        self.stats.observe_round(len(fetched), time.perf_counter() - began, latencies)

    async def _deliver(self, outcome: RoundOutcome) -> None:
        await self._dead_letters.send(self.model, outcome.dead_letters)
        await self._replies.deliver(outcome.replies)

    async def _retrying(self, what: str, step: Any) -> Any:
        """Run ``step`` until it gets past a backend outage (``stop()`` cancels it after the drain timeout)."""
        backoff = _BACKOFF_MIN_S
        while True:
            try:
                return await step()
            except (BackendDownError, BackendUnavailableError) as exc:
                log.warning("model %s: %s failed (%s); retrying in %.2fs", self.model, what, exc.message, backoff)
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)

    async def _commit(self, fetched: Sequence[Fetched]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for item in fetched:
            tp = TopicPartition(item.record.topic, item.record.partition)
            offsets[tp] = max(offsets.get(tp, 0), item.record.offset + 1)
        consumer = self._consumer
        if consumer is None or not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partitions: the new owner gets the records again, and the result
            # markers stop a second answer reaching the clients.
            log.warning("model %s: commit failed (%s); the records will be redelivered", self.model, exc)
