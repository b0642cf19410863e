"""One model's Kafka consumers: two priority lanes, a dynamic-batching window, handle, deliver, then commit.

The model has an interactive and a bulk lane (`workers.lanes`), each a consumer in its own group.
Each round serves one lane: interactive whenever it has records in hand, else at most
``bulk_max_batch`` bulk records, so an interactive request waits behind at most one small bulk round
and bulk fills the idle capacity. An interactive round waits (blocking, no busy loop) for the first
records, then keeps fetching until the model's ``max_batch_size`` rows are in hand or
``max_queue_delay_ms`` has passed since the first record; a bulk round takes what is there. The
handler answers every record; all replies go out in one Redis round trip, with the dead letters and
the retries (re-published to the lane's retry topic); only then are the offsets of exactly those
records committed. If Redis or Kafka is down, delivery is retried with backoff and nothing is
committed until it succeeds (``stop()`` gives up after the drain timeout, leaving the records to be
redelivered). Each step of a round happens once: a handle interrupted by a registry outage resumes with
the records not answered yet, and a retried delivery produces only the dead letters and retry records
Kafka did not take and delivers only the replies Redis did not store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from schemas import (
    ENVELOPE_VERSION,
    BackendUnavailableError,
    DeadLetter,
    FleetError,
    InferenceRequest,
    Lane,
    ModelRegistry,
    Names,
    SchemaError,
    now_ms,
)
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.load_failures import LoadFailures

from .artifact_cache import ArtifactCache
from .batching import request_rows
from .deadletter import DeadLetterWriter
from .errors import BackendDownError
from .handler import Fetched, Reply, RequestHandler, RoundOutcome
from .jobs import JobClaims
from .lanes import LaneConsumer
from .metrics import WorkerMetrics
from .models import ModelCache
from .replies import ReplyWriter
from .residency_manager import ResidencyManager
from .retries import RetryPolicy
from .settings import WorkerSettings
from .stats import ModelStats

log = logging.getLogger("fleet.workers")

#: Longest one idle fetch waits before the routine checks whether it should stop.
IDLE_POLL_MS = 200
#: Seconds without records after which the consumer switches to the idle fetch wait.
IDLE_AFTER_S = 1.0
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0
#: Interactive traffic counts as flowing for this long after its last round (bulk pacing, ``bulk_share``).
_INTERACTIVE_ACTIVE_S = 1.0
#: Longest a rebalance waits for the round in hand to be delivered and committed.
_REVOKE_WAIT_S = 10.0


@dataclass
class _Undelivered:
    """What of a round's outcome has not reached Kafka or Redis yet (a retry sends only this)."""

    dead_letters: list[DeadLetter]
    retries: list[InferenceRequest]
    replies: list[Reply]

    @classmethod
    def of(cls, outcome: RoundOutcome) -> _Undelivered:
        return cls(list(outcome.dead_letters), list(outcome.retries), list(outcome.replies))

    def summary(self) -> str:
        return (
            f"{len(self.dead_letters)} dead letter(s), {len(self.retries)} retry record(s) and "
            f"{len(self.replies)} reply(ies) still to deliver"
        )


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
        self.cache = ModelCache(
            model,
            ModelRegistry(redis, names),
            self._executor,
            settings,
            residency,
            artifacts,
            LoadFailures(redis, names, settings.worker_id),
        )
        #: What the worker publishes for the autoscaler (schemas.stats).
        self.stats = ModelStats()
        claims = JobClaims(redis, names, settings.worker_id)
        retry = RetryPolicy(
            settings.retry_attempts, settings.retry_base_ms, settings.retry_max_ms, settings.retry_jitter
        )
        self._handler = RequestHandler(
            model, self.cache, self._executor, settings.worker_id, metrics, self.stats, claims, retry
        )
        self._producer = producer
        self._metrics = metrics
        self._replies = ReplyWriter(redis, names, producer)
        self._dead_letters = DeadLetterWriter(producer, names)
        kafka = settings.fleet.kafka
        self._interactive = LaneConsumer(model, Lane.INTERACTIVE, names, kafka)
        self._bulk = LaneConsumer(model, Lane.BULK, names, kafka)
        self._lanes = (self._interactive, self._bulk)
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._round_lock = asyncio.Lock()
        #: Set once both lanes' groups have given this consumer an assignment (possibly empty).
        self.assigned = asyncio.Event()
        self._last_records = time.monotonic()
        self._idle = False
        self._last_interactive = -1e9  # monotonic s of the last interactive round
        self._bulk_rest_until = 0.0  # monotonic s before which no bulk round starts

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
        backoff = _BACKOFF_MIN_S
        while not self._closing.is_set():
            try:
                fetched, lane = await self._collect()
            except KafkaError as exc:
                log.warning("model %s: fetch failed (%s); retrying in %.2fs", self.model, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = _BACKOFF_MIN_S
            if fetched:
                async with self._round_lock:
                    await self._run_round(fetched, lane)

    async def _collect(self) -> tuple[list[Fetched], LaneConsumer]:
        """Records of one round and their lane: interactive first, else a bounded bulk round, else wait."""
        for lane in self._lanes:
            lane.release_due()
        limit = self._settings.max_fetch_records
        bulk_limit = min(limit, self._settings.bulk_max_batch)
        fetched = await self._interactive.take(0, limit)
        if fetched:
            return await self._fill(fetched), self._interactive
        rest_ms = int((self._bulk_rest_until - time.monotonic()) * 1000)
        if rest_ms > 0:
            # Bulk rests (FLEET_WORKER_BULK_SHARE) while interactive traffic flows; interactive ends the rest.
            fetched = await self._interactive.take(rest_ms, limit)
            if fetched:
                return await self._fill(fetched), self._interactive
        fetched = await self._bulk.take(0, bulk_limit)
        if fetched:
            self._note_records()
            return fetched, self._bulk
        fetched, lane = await self._wait_any(limit, bulk_limit)
        if not fetched:
            if not self._idle and time.monotonic() - self._last_records > IDLE_AFTER_S:
                self._set_idle(True)
            return fetched, lane
        if lane is self._interactive:
            return await self._fill(fetched), lane
        self._note_records()
        return fetched, lane

    async def _wait_any(self, limit: int, bulk_limit: int) -> tuple[list[Fetched], LaneConsumer]:
        """Block until either lane has records (or the poll ends); interactive wins when both do."""
        poll_ms = IDLE_POLL_MS
        for lane in self._lanes:
            release = lane.next_release_s()
            if release is not None:
                poll_ms = max(1, min(poll_ms, int(release * 1000) + 1))
        waits = {
            asyncio.ensure_future(self._interactive.consumer.getmany(timeout_ms=poll_ms, max_records=limit)): (
                self._interactive
            ),
            asyncio.ensure_future(self._bulk.consumer.getmany(timeout_ms=poll_ms, max_records=bulk_limit)): self._bulk,
        }
        try:
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            for future in waits:
                future.cancel()
            raise
        # Cancelling a getmany still waiting loses nothing: aiokafka hands records over only when it returns.
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        results: dict[LaneConsumer, list[Fetched]] = {}
        failure: BaseException | None = None
        for future in done:
            lane = waits[future]
            if future.cancelled():
                continue
            if future.exception() is not None:
                failure = future.exception()
                continue
            results[lane] = lane.sort(future.result())
        if failure is not None:
            # Records one lane returned must not be dropped (later commits would skip them): keep them.
            for lane, taken in results.items():
                lane.carried.extend(taken)
            raise failure
        interactive, bulk = results.get(self._interactive, []), results.get(self._bulk, [])
        if interactive:
            self._bulk.carried.extend(bulk)
            return interactive, self._interactive
        return bulk, self._bulk

    def _note_records(self) -> None:
        self._last_records = time.monotonic()
        if self._idle:
            self._set_idle(False)

    async def _fill(self, fetched: list[Fetched]) -> list[Fetched]:
        """An interactive round: keep fetching until the batch is full or the batching window closes."""
        self._last_interactive = time.monotonic()
        limit = self._settings.max_fetch_records
        self.stats.in_hand = len(fetched)
        first = time.monotonic()
        self._note_records()
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
            more = await self._interactive.take(remaining_ms, limit - len(fetched))
            fetched.extend(more)
            self.stats.in_hand = len(fetched)
            rows += sum(request_rows(f.request) for f in more if f.request is not None)
        return fetched

    def _set_idle(self, idle: bool) -> None:
        """Lengthen the fetch wait while idle, restore it when records flow.

        A broker that does not wake a waiting fetch when data arrives (the local Tansu broker) makes
        the fetch wait the latency floor, so it is kept short under load; idle, the same short wait
        means a fetch round trip every few milliseconds for nothing.
        """
        self._idle = idle
        idle_wait = self._settings.idle_fetch_wait_ms
        if idle_wait <= 0:
            return
        busy_wait = self._settings.fleet.kafka.fetch_max_wait_ms
        for lane in self._lanes:
            lane.set_fetch_wait(max(busy_wait, idle_wait) if idle else busy_wait)

    async def _run_round(self, fetched: Sequence[Fetched], lane: LaneConsumer) -> None:
        began = time.perf_counter()
        self.stats.in_hand = len(fetched)
        self._metrics.lane_requests.labels(self.model, lane.lane.value).inc(len(fetched))
        outcome = RoundOutcome()
        await self._retrying("handle", lambda: self._handler.handle(fetched, outcome))
        undelivered = _Undelivered.of(outcome)
        await self._retrying("deliver", lambda: self._deliver(undelivered, lane))
        delivered_ms = now_ms()
        self.stats.in_hand = 0
        await lane.commit_soon(fetched)
        share = self._settings.bulk_share
        if lane is self._bulk and share < 1.0 and time.monotonic() - self._last_interactive < _INTERACTIVE_ACTIVE_S:
            spent = time.perf_counter() - began
            self._bulk_rest_until = time.monotonic() + spent * (1.0 - share) / share
        latencies = [delivered_ms - f.request.created_ms for f in fetched if f.request is not None]
        self._metrics.observe_delivered(
            self.model,
            [(f.request.version, (delivered_ms - f.request.created_ms) / 1000) for f in fetched if f.request],
        )
        self.stats.observe_round(len(fetched), time.perf_counter() - began, latencies)

    async def _deliver(self, undelivered: _Undelivered, lane: LaneConsumer) -> None:
        """Send what is still undelivered; BackendDownError (retry) while anything is left."""
        problem = ""
        if undelivered.dead_letters:
            undelivered.dead_letters = await self._dead_letters.send_some(self.model, undelivered.dead_letters)
        if undelivered.retries:
            undelivered.retries = await self._send_retries(lane.retry_topic, undelivered.retries)
        if undelivered.replies:
            try:
                report = await self._replies.deliver_some(undelivered.replies)
            except BackendDownError as exc:
                problem = exc.message
            else:
                undelivered.replies, problem = report.pending, report.error
        if undelivered.dead_letters or undelivered.retries or undelivered.replies:
            raise BackendDownError(f"{undelivered.summary()}{': ' + problem if problem else ''}")

    async def _send_retries(self, topic: str, retries: Sequence[InferenceRequest]) -> list[InferenceRequest]:
        """Re-publish requests for their next try; returns those Kafka did not take (send them again)."""
        sent: list[tuple[InferenceRequest, Any]] = []
        pending: list[InferenceRequest] = []
        for request in retries:
            key = request.id.encode()
            headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, str(ENVELOPE_VERSION).encode())]
            try:
                sent.append((request, await self._producer.send(topic, request.to_bytes(), key=key, headers=headers)))
            except KafkaError as exc:
                log.warning("model %s: retry of %s not stored yet: %s", self.model, request.id, exc)
                pending.append(request)
        outcomes = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        for (request, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, KafkaError):
                    raise outcome
                log.warning("model %s: retry of %s not stored yet: %s", self.model, request.id, outcome)
                pending.append(request)
        if len(pending) < len(retries):
            log.info("model %s: %d request(s) to retry on %s", self.model, len(retries) - len(pending), topic)
        return pending

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
