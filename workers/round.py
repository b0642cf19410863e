"""One round of one model's records: handle, deliver (retried through outages), commit, record metrics.

The handler answers every record; all replies go out in one Redis round trip, with the dead letters
and the retries (re-published to the lane's shared retry topic, see `workers.retries`); only then are the
offsets of exactly those records committed (``commit``, the caller's). If Redis or Kafka is down, delivery
is retried with backoff and nothing is committed until it succeeds (the owner cancels the round after its drain
timeout, leaving the records to be redelivered). Each step happens once: a handle interrupted by a
registry outage resumes with the records not answered yet, and a retried delivery produces only the
dead letters and retry records Kafka did not take and delivers only the replies Redis did not store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

from common import Backoff, BackoffPolicy, tracing
from schemas import BackendUnavailableError, DeadLetter, Lane, now_ms

from .deadletter import DeadLetterWriter
from .errors import BackendDownError
from .handler import Fetched, Reply, RequestHandler, RoundOutcome, Turn
from .metrics import WorkerMetrics
from .replies import ReplyWriter
from .retries import Retry, retry_headers
from .stats import ModelStats

log = logging.getLogger("fleet.workers")

T = TypeVar("T")

#: Pauses between tries to get past a Kafka or Redis outage (fetch, handle, deliver).
BACKEND_RETRY = BackoffPolicy(first_s=0.05, max_s=2.0)

Commit = Callable[[Sequence[Fetched]], Awaitable[None]]


@dataclass
class Undelivered:
    """What of a round's outcome has not reached Kafka or Redis yet (a retry sends only this)."""

    dead_letters: list[DeadLetter]
    retries: list[Retry]
    replies: list[Reply]

    @classmethod
    def of(cls, outcome: RoundOutcome) -> Undelivered:
        """Everything of ``outcome`` (nothing delivered yet)."""
        return cls(list(outcome.dead_letters), list(outcome.retries), list(outcome.replies))

    def __bool__(self) -> bool:
        return bool(self.dead_letters or self.retries or self.replies)

    def summary(self) -> str:
        """What is left, in words (for the retry log line)."""
        return (
            f"{len(self.dead_letters)} dead letter(s), {len(self.retries)} retry record(s) and "
            f"{len(self.replies)} reply(ies) still to deliver"
        )


async def retrying(model: str, what: str, step: Callable[[], Awaitable[T]]) -> T:
    """Run ``step`` until it gets past a backend outage (the caller cancels it to give up)."""
    backoff = Backoff(BACKEND_RETRY)
    while True:
        try:
            return await step()
        except (BackendDownError, BackendUnavailableError) as exc:
            pause = backoff.next()
            log.warning("model %s: %s failed (%s); retrying in %.2fs", model, what, exc.message, pause)
            await asyncio.sleep(pause)


class RoundRunner:
    """Runs the rounds of one model (the per-model consumer and the pool worker both use it)."""

    def __init__(
        self,
        model: str,
        handler: RequestHandler,
        producer: Any,
        replies: ReplyWriter,
        dead_letters: DeadLetterWriter,
        metrics: WorkerMetrics,
        stats: ModelStats,
    ) -> None:
        self.model = model
        self._handler = handler
        self._producer = producer
        self._replies = replies
        self._dead_letters = dead_letters
        self._metrics = metrics
        self.stats = stats
        #: Records of the rounds in flight, not delivered yet.
        self.in_hand = 0

    async def run(self, fetched: Sequence[Fetched], lane: Lane, retry_topic: str, commit: Commit) -> float:
        """Handle, deliver and commit ``fetched`` (records of one lane; retries go to ``retry_topic``, the lane's
        shared retry topic); returns the seconds the round took."""
        began = time.perf_counter()
        self.hold(len(fetched))
        try:
            outcome = await self.handle(fetched, lane)
            delivered_ms = await self.deliver_outcome(outcome, retry_topic)
        finally:
            self.hold(-len(fetched))
        await commit(fetched)
        spent = time.perf_counter() - began
        self.observe(fetched, delivered_ms, spent)
        return spent

    def hold(self, records: int) -> None:
        """Count ``records`` more (fewer, when negative) in hand: fetched, not delivered yet."""
        self.in_hand = max(0, self.in_hand + records)
        self.stats.in_hand = self.in_hand

    async def handle(self, fetched: Sequence[Fetched], lane: Lane, turn: Turn | None = None) -> RoundOutcome:
        """Answer every record of ``fetched`` (the model runs here), through registry outages; ``turn`` (see
        `RequestHandler.handle`) is awaited before the model thread is used, and before returning in any case."""
        self._metrics.lane_requests.labels(self.model, lane.value).inc(len(fetched))
        outcome = RoundOutcome()
        await retrying(self.model, "handle", lambda: self._handler.handle(fetched, outcome, turn))
        if turn is not None:
            await turn()  # a round that never needed the model still leaves it in order
        return outcome

    async def deliver_outcome(self, outcome: RoundOutcome, retry_topic: str) -> float:
        """Deliver all of ``outcome`` through outages; returns when it was delivered (epoch ms)."""
        undelivered = Undelivered.of(outcome)
        await retrying(self.model, "deliver", lambda: self.deliver(undelivered, retry_topic))
        return now_ms()

    def observe(self, fetched: Sequence[Fetched], delivered_ms: float, busy_s: float) -> None:
        """Record a committed round: its requests' latencies and ``busy_s``, the time it kept the worker busy."""
        tracing.delivered(fetched, self.model, delivered_ms)  # nothing when tracing is off
        latencies = [delivered_ms - f.request.created_ms for f in fetched if f.request is not None]
        self._metrics.observe_delivered(
            self.model,
            [(f.request.version, (delivered_ms - f.request.created_ms) / 1000) for f in fetched if f.request],
            tracing.exemplars(f.record for f in fetched if f.request),  # () when tracing is off
        )
        self.stats.observe_round(len(fetched), busy_s, latencies, sum(1 for f in fetched if f.last))

    async def deliver(self, undelivered: Undelivered, retry_topic: str) -> None:
        """Send what is still undelivered; BackendDownError (retry) while anything is left."""
        problem = ""
        if undelivered.dead_letters:
            undelivered.dead_letters = await self._dead_letters.send_some(self.model, undelivered.dead_letters)
        if undelivered.retries:
            undelivered.retries = await self._send_retries(retry_topic, undelivered.retries)
        if undelivered.replies:
            try:
                report = await self._replies.deliver_some(undelivered.replies)
            except BackendDownError as exc:
                problem = exc.message
            else:
                undelivered.replies, problem = report.pending, report.error
        if undelivered:
            raise BackendDownError(f"{undelivered.summary()}{': ' + problem if problem else ''}")

    async def _send_retries(self, topic: str, retries: Sequence[Retry]) -> list[Retry]:
        """Re-publish requests for their next try; returns those Kafka did not take (send them again)."""
        sent: list[tuple[Retry, Any]] = []
        pending: list[Retry] = []
        for retry in retries:
            request = retry.request
            key, headers = request.id.encode(), retry_headers(self.model, request, retry.trace)
            try:
                sent.append((retry, await self._producer.send(topic, request.to_bytes(), key=key, headers=headers)))
            except KafkaError as exc:
                log.warning("model %s: retry of %s not stored yet: %s", self.model, request.id, exc)
                pending.append(retry)
        outcomes = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        for (retry, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, KafkaError):
                    raise outcome
                log.warning("model %s: retry of %s not stored yet: %s", self.model, retry.request.id, outcome)
                pending.append(retry)
        if len(pending) < len(retries):
            log.info("model %s: %d request(s) to retry on %s", self.model, len(retries) - len(pending), topic)
        return pending


class RoundAbandoned(Exception):
    """A round not committed because a round before it was not (its offsets would skip the earlier records)."""


@dataclass(eq=False)
class _Flight:
    """One round in a pipeline: submitted, on the model, handled, delivered, committed."""

    fetched: Sequence[Fetched]
    previous: _Flight | None
    lane: Lane
    on_model: bool = False
    handled: asyncio.Event = field(default_factory=asyncio.Event)
    delivered: asyncio.Event = field(default_factory=asyncio.Event)  # delivered, failed or cancelled
    task: asyncio.Task[None] | None = None


class RoundPipeline:
    """Rounds of one model in flight at once (``depth`` at most), so the model never waits for I/O.

    Each round runs on the model after the round before it has left the model (``handle``, in submission
    order; what needs no model, the registry lookup and validation, is done before, while the round before runs
    on it: its ``turn``); its replies, dead letters and retries are then delivered (in round order) while the next round
    runs; it commits
    only after every round submitted before it has committed, so no offset past an undelivered record is
    ever committed (a round whose predecessor failed or was cancelled commits nothing: `RoundAbandoned`).
    The caller collects the next round once ``ready()`` returns: a slot is free and no round is waiting for
    the model, so while one round runs the next one is fetched, decoded and its batching window filled.
    ``model_idle`` is set while no round is on or waiting for the model (a bulk round is collected only then,
    so an interactive round never waits behind more than one bulk round). Depth 1 is the serial round.
    ``on_change()`` is called whenever a round leaves the model or finishes (a scheduler that drives many
    pipelines, the pool worker's, wakes on it instead of awaiting ``ready()``).
    """

    def __init__(self, runner: RoundRunner, depth: int, on_change: Callable[[], None] | None = None) -> None:
        self._runner = runner
        self._on_change = on_change
        self.depth = max(1, depth)
        self._flights: list[_Flight] = []
        self._last: _Flight | None = None
        self._changed = asyncio.Event()
        #: Set while no round is on the model or waiting for it.
        self.model_idle = asyncio.Event()
        self.model_idle.set()
        self._failure: BaseException | None = None
        self._busy_until = 0.0  # perf_counter when the last committed round ended (busy time is not counted twice)

    @property
    def in_flight(self) -> int:
        """Rounds submitted and not finished (committed, failed or cancelled)."""
        return len(self._flights)

    @property
    def failure(self) -> BaseException | None:
        """The failure of a round that crashed (not a cancellation, not `RoundAbandoned`), if any."""
        return self._failure

    def may_collect(self) -> bool:
        """Whether the next round may be collected now: a slot is free and no round waits for the model."""
        waiting = sum(1 for f in self._flights if not f.handled.is_set() and not f.on_model)
        return waiting == 0 and len(self._flights) < self.depth

    def before_model(self, lane: Lane | None = None) -> int:
        """Rounds (of ``lane``, or of any lane) on the model or waiting for it."""
        return sum(1 for f in self._flights if not f.handled.is_set() and (lane is None or f.lane is lane))

    def holding(self, partitions: set[tuple[str, int]]) -> list[asyncio.Task[None]]:
        """The rounds in flight that hold records of any of ``partitions`` (``(topic, partition)``)."""
        return [
            f.task
            for f in self._flights
            if f.task is not None and any((i.record.topic, i.record.partition) in partitions for i in f.fetched)
        ]

    async def ready(self) -> None:
        """Wait until the next round may be collected; raises the failure of a round (the routine's crash)."""
        while True:
            if self._failure is not None:
                raise self._failure
            if self.may_collect():
                return
            self._changed.clear()
            await self._changed.wait()

    def _note_change(self) -> None:
        self._changed.set()
        if self._on_change is not None:
            self._on_change()

    def submit(
        self,
        fetched: Sequence[Fetched],
        lane: Lane,
        retry_topic: str,
        commit: Commit,
        on_done: Callable[[float], None] | None = None,
    ) -> None:
        """Start a round of ``fetched`` (see `RoundRunner.run`); ``on_done(busy_s)`` once it has committed."""
        flight = _Flight(fetched, self._last, lane)
        self._last = flight
        self._flights.append(flight)
        self.model_idle.clear()
        self._runner.hold(len(fetched))
        flight.task = asyncio.create_task(
            self._run(flight, lane, retry_topic, commit, on_done), name=f"round-{self._runner.model}-{lane.value}"
        )
        flight.task.add_done_callback(lambda task: self._finished(flight, task))

    async def _run(
        self,
        flight: _Flight,
        lane: Lane,
        retry_topic: str,
        commit: Commit,
        on_done: Callable[[float], None] | None,
    ) -> None:
        previous, runner = flight.previous, self._runner
        began = time.perf_counter()

        async def turn() -> None:
            """The model is this round's once the round before has left it (what needs no model runs before)."""
            nonlocal began
            if flight.on_model or flight.handled.is_set():
                return
            if previous is not None:
                await previous.handled.wait()
            flight.on_model = True
            began = time.perf_counter()

        try:
            try:
                outcome = await runner.handle(flight.fetched, lane, turn)
            finally:
                self._left_model(flight)
            # The round waiting for the model wakes on `handled`: let it put its batch on the model thread before
            # this one encodes and sends its replies (the model would otherwise idle meanwhile).
            await asyncio.sleep(0)
            if previous is not None:
                # Deliveries in round order: a request redelivered into this round (a client retry, a
                # redelivery) whose first result the round before stored but has not yet produced to its
                # reply topic would otherwise be produced a second time.
                await previous.delivered.wait()
            try:
                delivered_ms = await runner.deliver_outcome(outcome, retry_topic)
            finally:
                flight.delivered.set()
        finally:
            runner.hold(-len(flight.fetched))
        if previous is not None and previous.task is not None:
            await asyncio.wait({previous.task})
            if previous.task.cancelled() or previous.task.exception() is not None:
                raise RoundAbandoned(f"model {runner.model}: a round before this one was not committed")
        await commit(flight.fetched)
        ended = time.perf_counter()
        busy = ended - max(began, self._busy_until)
        self._busy_until = ended
        runner.observe(flight.fetched, delivered_ms, busy)
        if on_done is not None:
            on_done(busy)

    def _left_model(self, flight: _Flight) -> None:
        flight.on_model = False
        flight.handled.set()
        if all(f.handled.is_set() for f in self._flights):
            self.model_idle.set()
        self._note_change()

    def _finished(self, flight: _Flight, task: asyncio.Task[None]) -> None:
        self._flights.remove(flight)
        flight.delivered.set()
        if not flight.handled.is_set():  # cancelled before it reached the model: the next may not wait for it
            self._left_model(flight)
        if self._last is flight:
            self._last = None
        if not task.cancelled():
            failure = task.exception()
            if failure is not None and not isinstance(failure, RoundAbandoned) and self._failure is None:
                self._failure = failure
        self._note_change()

    async def wait_idle(self) -> None:
        """Wait until every round submitted so far has finished (committed, failed or cancelled)."""
        tasks = [f.task for f in self._flights if f.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def drain(self) -> None:
        """Finish every round in flight (a stop); raises the failure of a round, if any."""
        await self.wait_idle()
        if self._failure is not None:
            raise self._failure

    async def cancel(self) -> None:
        """Cancel the rounds in flight (their records are redelivered) and wait for them to end."""
        tasks = [f.task for f in self._flights if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
