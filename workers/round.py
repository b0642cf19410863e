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
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

from common import Backoff, BackoffPolicy, tracing
from schemas import BackendUnavailableError, DeadLetter, InferenceRequest, Lane, now_ms

from .deadletter import DeadLetterWriter
from .errors import BackendDownError
from .handler import Fetched, Reply, RequestHandler, RoundOutcome
from .metrics import WorkerMetrics
from .replies import ReplyWriter
from .retries import retry_headers
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
    retries: list[InferenceRequest]
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

    async def run(self, fetched: Sequence[Fetched], lane: Lane, retry_topic: str, commit: Commit) -> float:
        """Handle, deliver and commit ``fetched`` (records of one lane; retries go to ``retry_topic``, the lane's
        shared retry topic); returns the seconds the round took."""
        began = time.perf_counter()
        self.stats.in_hand = len(fetched)
        self._metrics.lane_requests.labels(self.model, lane.value).inc(len(fetched))
        outcome = RoundOutcome()
        await retrying(self.model, "handle", lambda: self._handler.handle(fetched, outcome))
        undelivered = Undelivered.of(outcome)
        await retrying(self.model, "deliver", lambda: self.deliver(undelivered, retry_topic))
        delivered_ms = now_ms()
        tracing.delivered(fetched, self.model, delivered_ms)  # nothing when tracing is off
        self.stats.in_hand = 0
        await commit(fetched)
        spent = time.perf_counter() - began
        latencies = [delivered_ms - f.request.created_ms for f in fetched if f.request is not None]
        self._metrics.observe_delivered(
            self.model,
            [(f.request.version, (delivered_ms - f.request.created_ms) / 1000) for f in fetched if f.request],
        )
        self.stats.observe_round(len(fetched), spent, latencies)
        return spent

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

    async def _send_retries(self, topic: str, retries: Sequence[InferenceRequest]) -> list[InferenceRequest]:
        """Re-publish requests for their next try; returns those Kafka did not take (send them again)."""
        sent: list[tuple[InferenceRequest, Any]] = []
        pending: list[InferenceRequest] = []
        for request in retries:
            key, headers = request.id.encode(), retry_headers(self.model, request)
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
