"""One round of a model's records: decode, answer what cannot run, validate, batch, run, build responses.

The handler owns no I/O of its own besides registry lookups and the model thread: it returns the
replies, dead letters and retries of the round, and the consumer delivers them before committing.
Expired requests (deadline passed) are answered ``DEADLINE_EXCEEDED`` before they reach the model,
whatever their lane or try. A batch that fails transiently is retried per request (``retries``) under
the ``RetryPolicy``; a request out of tries (or of time before its deadline) gets its error reply and
a dead letter.

A batch that fails permanently is split in halves and the halves run apart (recursively, at most
``ISOLATION_RUNS`` extra runs per batch), so only the request(s) that make the model fail get MODEL_ERROR
and the others their answers; a poison request no longer takes its whole batch down.

A round is resumable: ``handle(fetched, outcome)`` after a BackendUnavailableError (the registry was down
half-way) answers only the records the outcome has not settled yet, so no request runs twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from common import tracing
from schemas import (
    DeadLetter,
    ErrorCode,
    FleetError,
    InferenceRequest,
    InferenceResponse,
    ModelRecord,
    RegistryError,
    ReplyAddress,
    ReplyKind,
    SchemaError,
    Tensor,
    check_inputs,
    now_ms,
)
from schemas.constants import HEADER_BATCH, HEADER_REQUEST_ID
from schemas.envelopes import InferenceRequestBatch
from schemas.logs import request_context

from .batching import Batch, merge_inputs, plan_batches, split_outputs
from .deadletter import dead_letter
from .errors import ModelExecutionError, ModelLoadError
from .jobs import JobClaims
from .metrics import WorkerMetrics
from .models import ModelCache
from .retries import Retry, RetryPolicy, is_retriable
from .runtimes import Runtime, bytes_input_problems
from .stats import ModelStats

log = logging.getLogger("fleet.workers")

Reply = tuple[ReplyAddress, InferenceResponse]
#: Awaited by a round before it first uses the model thread (`RoundPipeline`: the round before has left it).
Turn = Callable[[], Awaitable[None]]

#: Extra model runs one permanently failing batch may spend finding its failing request(s) by halving.
ISOLATION_RUNS = 16


@dataclass
class _Isolation:
    """The extra runs left to a failing batch's bisection."""

    runs_left: int = ISOLATION_RUNS


@dataclass(frozen=True, slots=True)
class Fetched:
    """A Kafka record and what decoding it gave: a request, or the reason it is not one.

    A batch record (``fleet-batch`` header: `InferenceRequestBatch`) gives one per member, in order: ``member``
    is its index (None for a single-request record), ``last`` is true on the record's last member only, so a
    commit moves past the record only with its last member (``next_offset``). A member that does not decode
    keeps itself as it came (``raw``) and, when its id is readable, a request without inputs (``stub``) to
    answer its error to.
    """

    record: Any  # aiokafka ConsumerRecord
    request: InferenceRequest | None
    error: SchemaError | None = None
    member: int | None = None
    last: bool = True
    raw: bytes | None = None
    stub: InferenceRequest | None = None

    @property
    def next_offset(self) -> int:
        """The offset to commit once this item is answered: past its record, or at it while members of the
        record are still to come (a round that took only the first members of a batch record)."""
        return int(self.record.offset) + 1 if self.last else int(self.record.offset)


def decode(record: Any) -> list[Fetched]:
    """Decode one record (never raises): its request, each member of a batch record, or why it is neither."""
    if _batch_header(record):
        try:
            members = InferenceRequestBatch.members_from_bytes(record.value)
        except SchemaError as exc:
            return [Fetched(record, None, exc)]
        last = len(members) - 1
        return [
            Fetched(record, m, None, i, i == last)
            if isinstance(m, InferenceRequest)
            else Fetched(record, None, m.error, i, i == last, m.value, m.stub)
            for i, m in enumerate(members)
        ]
    try:
        return [Fetched(record, InferenceRequest.from_bytes(record.value))]
    except SchemaError as exc:
        return [Fetched(record, None, exc)]


def _batch_header(record: Any) -> bool:
    return any(key == HEADER_BATCH for key, _ in record.headers or ())


@dataclass(frozen=True, slots=True)
class _MemberRecord:
    """A batch member as a record of its own (what its dead letter keeps): the batch record's position, the
    member alone as a single-request envelope, keyed by its id."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def letter_record(item: Fetched) -> Any:
    """The record a dead letter of ``item`` keeps: its Kafka record, or for a batch member that member alone
    (so ``fleet dlq replay`` sends it as a single request)."""
    if item.member is None:
        return item.record
    record = item.record
    request = item.request or item.stub
    key = request.id.encode() if request is not None else None
    value = item.request.to_bytes() if item.request is not None else (item.raw or b"")
    headers = [(k, bytes(v or b"")) for k, v in record.headers or () if k not in (HEADER_BATCH, HEADER_REQUEST_ID)]
    if key is not None:
        headers.insert(0, (HEADER_REQUEST_ID, key))
    return _MemberRecord(record.topic, record.partition, record.offset, key, value, tuple(headers))


@dataclass
class RoundOutcome:
    """What a round produced: replies to deliver, records to dead-letter and requests to retry later."""

    replies: list[Reply] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Requests to re-publish to the lane's retry topic (``attempt`` and ``not_before_ms`` already set).
    retries: list[Retry] = field(default_factory=list)
    #: Records answered already (``record_key``): a resumed round skips them.
    settled: set[tuple[str, int, int, int]] = field(default_factory=set)

    def settle(self, items: Sequence[Fetched]) -> None:
        """Mark ``items`` answered (a reply, a dead letter or a retry is in the outcome, or nothing is due)."""
        self.settled.update(record_key(item) for item in items)


def record_key(item: Fetched) -> tuple[str, int, int, int]:
    """Where a record (and the member of a batch record) sits in Kafka: unique within a round."""
    return (item.record.topic, item.record.partition, item.record.offset, item.member or 0)


@dataclass(frozen=True, slots=True)
class _Executed:
    started_ms: float  # wall clock at the start of compute
    compute_s: float
    outputs: list[tuple[Tensor, ...]]


def validate(record: ModelRecord, request: InferenceRequest) -> None:
    """Raise SchemaError(INVALID_INPUT) unless ``request`` fits ``record``'s signature."""
    check_inputs(record.inputs, request.inputs, batched=record.batched)
    known = [spec.name for spec in record.outputs]
    unknown = sorted(set(request.outputs) - set(known))
    if unknown:
        raise SchemaError(f"unknown output(s) {unknown}; the model has {known}", code=ErrorCode.INVALID_INPUT)


def _execute(runtime: Runtime, requests: Sequence[InferenceRequest], batch: Batch) -> _Executed:
    """Merge, run and split one batch (runs on the model thread, never on the event loop)."""
    record = runtime.record
    try:
        inputs = merge_inputs(requests)
        started_ms = now_ms()
        began = time.perf_counter()
        outputs = runtime.predict(inputs)
        compute_s = time.perf_counter() - began
        parts = split_outputs(outputs, batch.rows, batched=record.batched)
        wanted = [request.outputs or tuple(spec.name for spec in record.outputs) for request in requests]
        tensors = [
            tuple(Tensor.from_numpy(name, part[name]) for name in names)
            for names, part in zip(wanted, parts, strict=True)
        ]
    except ModelExecutionError:
        raise
    except Exception as exc:  # anything the model or the conversion raised fails this batch only
        raise ModelExecutionError(f"{type(exc).__name__}: {exc}") from exc
    return _Executed(started_ms, compute_s, tensors)


class RequestHandler:
    """Turns the records of one round into replies and dead letters for one served model."""

    def __init__(
        self,
        model: str,
        cache: ModelCache,
        executor: Executor,
        worker_id: str,
        metrics: WorkerMetrics,
        stats: ModelStats | None = None,
        claims: JobClaims | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._model = model
        self._stats = stats
        self._retry = retry or RetryPolicy(max_attempts=1)
        self._claims = claims
        self._cache = cache
        self._executor = executor
        self._worker_id = worker_id
        self._metrics = metrics

    async def handle(
        self, fetched: Sequence[Fetched], outcome: RoundOutcome | None = None, turn: Turn | None = None
    ) -> RoundOutcome:
        """Answer every record of the round not settled in ``outcome`` yet (a new outcome when None).

        ``turn`` (a pipelined round): awaited before the round first uses the model thread, so what needs no model
        (decoding, job claims, the registry lookup, validation) is done while the round before still runs on it;
        deadlines are checked again once it has passed. Raises BackendUnavailableError (registry down): call again
        with the same outcome to finish the round.
        """
        outcome = RoundOutcome() if outcome is None else outcome
        by_version: dict[str, list[Fetched]] = {}
        now = now_ms()
        for item in fetched:
            if record_key(item) in outcome.settled:
                continue
            request = item.request
            if request is None:
                error = item.error or SchemaError("undecodable record")
                log.debug(
                    "record dead-lettered: %s",
                    error.message,
                    extra={"request_id": header_request_id(item.record), "code": error.code.value},
                )
                self._metrics.failure.labels(self._model, "", error.code.value).inc()
                worker = self._worker_id
                outcome.dead_letters.append(dead_letter(letter_record(item), error.code, error.message, worker))
                stub = item.stub
                if stub is not None and stub.reply.kind is not ReplyKind.NONE:
                    # A bad member of a batch record whose id is readable: its caller gets the error too.
                    failure = InferenceResponse.failure(stub, error.code, error.message, worker)
                    outcome.replies.append((stub.reply, failure))
            elif request.model != self._model:
                message = f"request for model {request.model!r} on the topic of {self._model!r}"
                self._refuse(outcome, item, ErrorCode.MODEL_NOT_FOUND, message)
            elif request.expired(now):
                message = f"deadline passed {now - (request.deadline_ms or now):.0f} ms before the worker got to it"
                self._fail(outcome, request, ErrorCode.DEADLINE_EXCEEDED, message)
            else:
                by_version.setdefault(request.version, []).append(item)
                continue
            outcome.settle([item])
        if self._claims is not None and by_version:
            # Async jobs: mark them running, drop those cancelled (or answered) already.
            skipped = await self._claims.skipped([_request(i) for items in by_version.values() for i in items])
            if skipped:
                outcome.settle([i for items in by_version.values() for i in items if _request(i).id in skipped])
                by_version = {
                    version: kept
                    for version, items in by_version.items()
                    if (kept := [i for i in items if _request(i).id not in skipped])
                }
        for version, items in by_version.items():
            await self._handle_version(outcome, version, items, turn)
        return outcome

    async def _handle_version(
        self, outcome: RoundOutcome, version: str, items: list[Fetched], turn: Turn | None = None
    ) -> None:
        try:
            record = await self._cache.record(version)
        except RegistryError as exc:
            for item in items:
                self._refuse(outcome, item, exc.code, exc.message)
            outcome.settle(items)
            return
        except SchemaError as exc:  # a registry entry that does not decode
            for item in items:
                self._fail(outcome, _request(item), ErrorCode.MODEL_LOAD_FAILED, exc.message)
            outcome.settle(items)
            return
        valid: list[Fetched] = []
        for item in items:
            try:
                validate(record, _request(item))
            except SchemaError as exc:
                self._fail(outcome, _request(item), ErrorCode.INVALID_INPUT, exc.message)
            else:
                valid.append(item)
        if turn is not None and valid:
            await turn()  # the model thread is this round's from here on
            valid = self._unexpired(outcome, valid)
        valid = await self._check_bytes_inputs(outcome, record, valid)
        kept = {id(item) for item in valid}
        outcome.settle([item for item in items if id(item) not in kept])
        if not valid:
            return
        try:
            runtime = await self._cache.acquire(record, len(valid))
        except ModelLoadError as exc:
            for item in valid:
                self._fail(outcome, _request(item), exc.code, exc.message)
            outcome.settle(valid)
            return
        try:  # pinned: not evicted while its batches run
            requests = [_request(item) for item in valid]
            for batch in plan_batches(requests, record.batching.max_batch_size, batched=record.batched):
                await self._run(outcome, runtime, [valid[i] for i in batch.indices], batch)
        finally:
            self._cache.release(record)

    def _unexpired(self, outcome: RoundOutcome, items: list[Fetched]) -> list[Fetched]:
        """The items whose deadline has not passed; the others are answered DEADLINE_EXCEEDED."""
        now = now_ms()
        kept: list[Fetched] = []
        for item in items:
            request = _request(item)
            if request.expired(now):
                message = f"deadline passed {now - (request.deadline_ms or now):.0f} ms before the worker got to it"
                self._fail(outcome, request, ErrorCode.DEADLINE_EXCEEDED, message)
            else:
                kept.append(item)
        return kept

    async def _check_bytes_inputs(
        self, outcome: RoundOutcome, record: ModelRecord, items: list[Fetched]
    ) -> list[Fetched]:
        """The items whose BYTES inputs the runtime can take; the others are answered INVALID_INPUT, each alone."""
        if not items or not any(spec.datatype == "BYTES" for spec in record.inputs):
            return items
        loop = asyncio.get_running_loop()  # decoding every element is blocking work: on the model thread
        problems = await loop.run_in_executor(
            self._executor, bytes_input_problems, record, [_request(item).inputs for item in items]
        )
        kept: list[Fetched] = []
        for item, problem in zip(items, problems, strict=True):
            if problem is None:
                kept.append(item)
            else:
                self._fail(outcome, _request(item), ErrorCode.INVALID_INPUT, problem)
        return kept

    async def _run(self, outcome: RoundOutcome, runtime: Runtime, items: list[Fetched], batch: Batch) -> None:
        requests = [_request(item) for item in items]
        with request_context(request_ids=[r.id for r in requests]):  # the batch's log lines carry its ids
            await self._run_batch(outcome, runtime, items, requests, batch)
        outcome.settle(items)

    async def _run_batch(
        self,
        outcome: RoundOutcome,
        runtime: Runtime,
        items: list[Fetched],
        requests: list[InferenceRequest],
        batch: Batch,
        isolation: _Isolation | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            done = await loop.run_in_executor(self._executor, _execute, runtime, requests, batch)
        except ModelExecutionError as exc:
            retriable = exc.retriable or (exc.__cause__ is not None and is_retriable(exc.__cause__))
            log.warning(
                "model %s:%s failed on a batch of %d (%s): %s",
                self._model,
                runtime.record.version,
                len(requests),
                "transient" if retriable else "permanent",
                exc,
            )
            isolation = isolation or _Isolation()
            if not retriable and len(items) > 1 and isolation.runs_left >= 2:
                await self._bisect(outcome, runtime, items, requests, batch, isolation)
                return
            for item in items:
                if retriable:
                    self._retry_or_give_up(outcome, item, exc.message)
                else:
                    self._fail(outcome, _request(item), ErrorCode.MODEL_ERROR, exc.message)
            return
        version = runtime.record.version
        queue_ms = [max(0.0, done.started_ms - r.created_ms) for r in requests]
        self._metrics.observe_batch(self._model, version, len(requests), done.compute_s, [q / 1000 for q in queue_ms])
        self._metrics.success.labels(self._model, version).inc(len(requests))
        if self._stats is not None:
            self._stats.observe_batch(len(requests), done.compute_s, sum(queue_ms))
        tracing.batch_ran(items, self._worker_id, done.started_ms, done.compute_s)
        log.debug("model %s:%s ran a batch of %d in %.3f ms", self._model, version, len(requests), done.compute_s * 1e3)
        for request, outputs, queued in zip(requests, done.outputs, queue_ms, strict=True):
            response = InferenceResponse(
                request.id,
                request.model,
                request.version,
                outputs=outputs,
                worker=self._worker_id,
                batch_size=len(requests),
                queue_ms=queued,
                compute_ms=done.compute_s * 1000,
            )
            outcome.replies.append((request.reply, response))

    async def _bisect(
        self,
        outcome: RoundOutcome,
        runtime: Runtime,
        items: list[Fetched],
        requests: list[InferenceRequest],
        batch: Batch,
        isolation: _Isolation,
    ) -> None:
        """Run the halves of a permanently failing batch apart, so only the failing request(s) get the error."""
        half = len(items) // 2
        log.info("model %s: running the halves (%d, %d) of a failed batch apart", self._model, half, len(items) - half)
        for part in (slice(0, half), slice(half, None)):
            isolation.runs_left -= 1
            sub = Batch(batch.indices[part], batch.rows[part])
            await self._run_batch(outcome, runtime, items[part], requests[part], sub, isolation)

    def _retry_or_give_up(self, outcome: RoundOutcome, item: Fetched, message: str) -> None:
        """A transient failure: schedule the next try, or answer with the error and dead-letter the request."""
        request = _request(item)
        decision = self._retry.decide(request, now_ms())
        if decision.retry:
            retry = dataclasses.replace(request, attempt=request.attempt + 1, not_before_ms=decision.not_before_ms)
            outcome.retries.append(Retry(retry, tracing.trace_headers(item.record.headers)))  # its trace goes on
            self._metrics.retries.labels(self._model, request.version).inc()
            return
        reason = f"{decision.why_not}: {message}"
        self._fail(outcome, request, ErrorCode.MODEL_ERROR, reason)
        outcome.dead_letters.append(dead_letter(letter_record(item), ErrorCode.MODEL_ERROR, reason, self._worker_id))

    def _fail(self, outcome: RoundOutcome, request: InferenceRequest, code: ErrorCode, message: str) -> None:
        log.info(
            "request failed: %s",
            message,
            extra={"request_id": request.id, "model": self._model, "version": request.version, "code": code.value},
        )
        self._metrics.failure.labels(self._model, request.version, code.value).inc()
        outcome.replies.append((request.reply, InferenceResponse.failure(request, code, message, self._worker_id)))

    def _refuse(self, outcome: RoundOutcome, item: Fetched, code: ErrorCode, message: str) -> None:
        """An error reply when someone waits for one, else a dead letter."""
        request = _request(item)
        if request.reply.kind is ReplyKind.NONE:
            self._metrics.failure.labels(self._model, request.version, code.value).inc()
            outcome.dead_letters.append(dead_letter(letter_record(item), code, message, self._worker_id))
        else:
            self._fail(outcome, request, code, message)


def header_request_id(record: Any) -> str | None:
    """The ``fleet-request-id`` header of a Kafka record (set by the gateway and producers), if any."""
    for key, value in record.headers or ():
        if key == HEADER_REQUEST_ID and value:
            return bytes(value).decode("utf-8", "replace")
    return None


def _request(item: Fetched) -> InferenceRequest:
    if item.request is None:  # pragma: no cover - callers pass decoded items only
        raise FleetError("record was not decoded")
    return item.request
