"""Direct Kafka producer client: numpy arrays in, ``InferenceRequest`` envelopes on the model's topic, numpy out.

For services that skip HTTP and publish straight to ``names.request_topic(model)`` with the shared
schemas. Inputs are checked against the registered signature before anything is sent (a bad input
raises ``SchemaError(INVALID_INPUT)`` at the call site). Replies come back one of two ways:

* ``ReplyKind.STREAM`` (default): workers ``XADD`` each first result to this client's own reply stream
  (``names.client_reply_stream(client_id)``); one routine reads it with ``XREAD BLOCK`` (no per-request
  polling) and hands results to :meth:`FleetProducer.results` or to the caller of :meth:`FleetProducer.infer`.
* ``ReplyKind.RESULT``: workers only store the result under ``names.result_key(id)``; the caller fetches
  it later with :meth:`FleetProducer.result` / :meth:`FleetProducer.wait_result` (submit now, come back later;
  ``result_ttl_s`` keeps it longer than the default hour).
* ``ReplyKind.TOPIC``: workers store the result and produce it (an ``InferenceResponse``, key = request
  id) to the Kafka topic ``reply_topic`` that a streaming pipeline consumes.

A request without a version goes where the gateway would send it: to the model's default version, or
to the version its traffic split picks for the request id (``fleet models traffic``, the same hash as
the gateway's), both re-read every ``routing_ttl_s`` (1 s), so a canary, a promotion or a rollback
reaches direct producers too; the last known routing is kept while Redis is unreachable.

Sends are pipelined (``await producer.send()`` only enqueues into aiokafka's batches; delivery is
tracked by a callback), and at most ``max_in_flight`` requests are unanswered at a time: ``submit``
waits for a free slot (backpressure). A request unanswered ``timeout_s`` (+1 s grace) after it was sent
completes with ``DEADLINE_EXCEEDED``; its envelope carries the same deadline, so workers skip it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from schemas import (
    ENVELOPE_VERSION,
    BackendUnavailableError,
    ErrorCode,
    ErrorInfo,
    FleetError,
    FleetSettings,
    InferenceRequest,
    InferenceResponse,
    Lane,
    ModelRecord,
    ModelRegistry,
    Names,
    ParameterValue,
    RegistryError,
    ReplyAddress,
    ReplyKind,
    SchemaError,
    Tensor,
    check_inputs,
    now_ms,
)
from schemas.constants import HEADER_ENVELOPE_VERSION
from schemas.eventloop import AsyncService
from schemas.traffic import TrafficSplit

log = logging.getLogger("fleet.producer")

Array = npt.NDArray[Any]
_VERSION_HEADER = [(HEADER_ENVELOPE_VERSION, str(ENVELOPE_VERSION).encode())]
_READ_COUNT = 2000
_TRIM_EVERY = 5000
_SWEEP_EVERY_S = 0.5
_GRACE_S = 1.0
_STASH = 10_000  # replies kept for ids not in flight (a re-sent request picks its answer up here)
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0


class RequestFailedError(FleetError):
    """A request the fleet answered with an error (``code`` is the worker's, e.g. INVALID_INPUT)."""


@dataclass(frozen=True, slots=True)
class ProducerResult:
    """The answer to one request: numpy outputs by name, or the error the fleet gave."""

    request_id: str
    model: str
    version: str
    outputs: dict[str, Array]
    error: ErrorInfo | None = None
    batch_size: int = 0  # requests the worker ran together with this one
    queue_ms: float = 0.0  # from the request's creation to the start of its batch
    compute_ms: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the request succeeded."""
        return self.error is None

    def unwrap(self) -> dict[str, Array]:
        """The outputs, or RequestFailedError carrying the fleet's code and message."""
        if self.error is not None:
            raise RequestFailedError(f"request {self.request_id}: {self.error.message}", code=self.error.code)
        return self.outputs

    @classmethod
    def from_response(cls, response: InferenceResponse) -> ProducerResult:
        """Result view of a worker's response envelope."""
        outputs = {t.name: t.to_numpy() for t in response.outputs}
        return cls(
            response.id,
            response.model,
            response.version,
            outputs,
            response.error,
            response.batch_size,
            response.queue_ms,
            response.compute_ms,
        )

    @classmethod
    def failed(cls, request_id: str, model: str, version: str, code: ErrorCode, message: str) -> ProducerResult:
        """A result that failed on this side (not sent, or not answered in time)."""
        return cls(request_id, model, version, {}, ErrorInfo(code, message))


@dataclass(slots=True)
class _Pending:
    model: str
    version: str
    expires: float  # time.monotonic() after which the client gives up
    future: asyncio.Future[ProducerResult] | None  # infer() waits on it; None: results() gets it


@dataclass(slots=True)
class _Route:
    """Where unversioned requests of a model go, as last read from the registry."""

    default: str
    split: TrafficSplit | None
    until: float  # time.monotonic() after which it is read again


class FleetProducer(AsyncService):
    """``async with FleetProducer(settings) as p: y = await p.infer("tiny", {"x": array})``.

    ``lane`` picks the model's request topic: ``interactive`` (served first) or ``bulk`` (batch pipelines,
    served with the idle capacity); ``submit(lane=...)`` overrides it per request.
    ``client_id`` names the reply stream (default: random); a client that must find its replies again
    after a restart (``fleet batch run --resume``) passes the same id. ``linger_ms`` and ``max_batch_bytes``
    (per partition) let aiokafka fill bigger produce requests: with aiokafka's 16 KiB default a full batch
    makes ``send()`` wait, which caps a one-row-per-record stream well below 10,000 records/s.
    ``delete_stream`` drops the reply stream on stop.
    """

    def __init__(
        self,
        settings: FleetSettings,
        *,
        client_id: str | None = None,
        reply: ReplyKind = ReplyKind.STREAM,
        reply_topic: str | None = None,
        result_ttl_s: int = 0,
        lane: Lane | str = Lane.INTERACTIVE,
        max_in_flight: int = 10_000,
        timeout_s: float = 60.0,
        linger_ms: int = 5,
        max_batch_bytes: int = 256 * 1024,
        delete_stream: bool = True,
        routing_ttl_s: float = 1.0,
    ) -> None:
        if reply is ReplyKind.NONE:
            raise ValueError("reply must be stream, result or topic (somebody has to get the answer)")
        if (reply is ReplyKind.TOPIC) != bool(reply_topic):
            raise ValueError("reply_topic names the output topic, and only with reply=ReplyKind.TOPIC")
        if max_in_flight < 1 or timeout_s <= 0:
            raise ValueError("max_in_flight must be >= 1 and timeout_s > 0")
        self._settings = settings
        self._names = Names(settings.namespace)
        self.client_id = client_id or f"p-{secrets.token_hex(6)}"
        self.stream = self._names.client_reply_stream(self.client_id)
        target = self.stream if reply is ReplyKind.STREAM else (reply_topic or "")
        self._reply = ReplyAddress(reply, target, result_ttl_s)
        self._lane = Lane.parse(lane)
        self._timeout_s = timeout_s
        self._linger_ms = linger_ms
        self._max_batch_bytes = max_batch_bytes
        self._delete_stream = delete_stream
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[str, _Pending] = {}
        self._stash: OrderedDict[str, ProducerResult] = OrderedDict()
        self._results: asyncio.Queue[ProducerResult | None] = asyncio.Queue()
        self._records: dict[tuple[str, str | None], ModelRecord] = {}
        self._routing_ttl_s = routing_ttl_s
        self._routes: dict[str, _Route] = {}
        self._partitions: dict[str, list[int]] = {}
        self._turn = 0
        self._redis: Any = None
        self._reader: Any = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_id = "0-0"
        self._closing = False
        self._block_ms = max(10, int(settings.redis.socket_timeout_s * 500))

    # lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Connect to Kafka and Redis; replies written to the stream from now on are all received."""
        if self._producer is not None or self._closing:
            raise RuntimeError("a FleetProducer starts once")
        kafka = self._settings.kafka
        self._redis = self._settings.redis.client()
        options = {"linger_ms": self._linger_ms, "max_batch_size": self._max_batch_bytes}
        producer = AIOKafkaProducer(**(kafka.producer_kwargs() | options))
        try:
            await producer.start()
            if self._reply.kind is ReplyKind.STREAM:
                self._reader = self._settings.redis.client()
                newest = await self._reader.xrevrange(self.stream, count=1)
                self._last_id = _text(newest[0][0]) if newest else "0-0"
        except (KafkaError, OSError) as exc:
            await self._close_clients(producer)
            raise BackendUnavailableError(f"Kafka unavailable at {kafka.bootstrap}: {exc}") from exc
        except RedisError as exc:
            await self._close_clients(producer)
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        self._producer = producer
        self._task = asyncio.create_task(self._reply_routine(), name=f"fleet-producer-{self.client_id}")

    async def stop(self) -> None:
        """Flush sends, stop reading, fail what is still waiting, close the clients; idempotent."""
        if self._closing:
            return
        self._closing = True
        producer, self._producer = self._producer, None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(self._block_ms / 1000 + self._settings.redis.socket_timeout_s + 1):
                    await asyncio.shield(task)
        for request_id in list(self._pending):
            self._complete(
                ProducerResult.failed(request_id, "", "", ErrorCode.BACKEND_UNAVAILABLE, "the producer is stopping")
            )
        self._results.put_nowait(None)
        if self._delete_stream and self._reader is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self._reader.delete(self.stream)
        await self._close_clients(producer)

    async def _close_clients(self, producer: AIOKafkaProducer | None) -> None:
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                async with asyncio.timeout(self._settings.kafka.request_timeout_ms / 1000):
                    await producer.stop()
        for client in (self._reader, self._redis):
            if client is not None:
                await client.aclose()
        self._reader = self._redis = None

    # the API -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    async def model_record(self, model: str, version: str | None = None) -> ModelRecord:
        """The registry record of ``model`` at ``version`` (None: its default version now).

        Versions are immutable, so a record is cached for the client's lifetime; the default is re-read
        every ``routing_ttl_s``.
        """
        if version is None:
            version = (await self._route(model)).default
        record = self._records.get((model, version))
        if record is None:
            record = await self._registry().get(model, version)
            self._records[(model, version)] = record
        return record

    def _registry(self) -> ModelRegistry:
        if self._redis is None:
            raise RuntimeError("the producer is not started")
        return ModelRegistry(self._redis, self._names)

    async def _route(self, model: str) -> _Route:
        """The default version and traffic split of ``model``, re-read once ``routing_ttl_s`` has passed
        (the last known one is kept while Redis is unreachable)."""
        known = self._routes.get(model)
        now = time.monotonic()
        if known is not None and known.until > now:
            return known
        registry = self._registry()
        try:
            default = await registry.default_version(model)
            try:
                split = await registry.traffic(model)
            except SchemaError as exc:  # a hand-edited split: serve the default rather than fail every request
                log.warning("ignoring the traffic split of %s: %s", model, exc.message)
                split = None
        except BackendUnavailableError:
            if known is None:
                raise
            log.warning("routing of %s not refreshed (Redis unavailable); keeping the last known one", model)
            known.until = now + self._routing_ttl_s
            return known
        if default is None:
            raise RegistryError(f"unknown model {model!r}", code=ErrorCode.MODEL_NOT_FOUND)
        route = self._routes[model] = _Route(default, split, now + self._routing_ttl_s)
        return route

    async def submit(
        self,
        model: str,
        inputs: Mapping[str, Array],
        *,
        version: str | None = None,
        request_id: str | None = None,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, ParameterValue] | None = None,
        lane: Lane | str | None = None,
    ) -> str:
        """Send one request and return its id; its result arrives through :meth:`results`.

        Waits while ``max_in_flight`` requests are unanswered. Raises SchemaError (INVALID_INPUT,
        PAYLOAD_TOO_LARGE) for inputs the model would refuse, RegistryError for an unknown model or
        version, BackendUnavailableError when Kafka refuses the record.
        """
        chosen = self._lane if lane is None else Lane.parse(lane)
        return await self._send(model, inputs, version, request_id, outputs, parameters, None, chosen)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Array],
        *,
        version: str | None = None,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, ParameterValue] | None = None,
        lane: Lane | str | None = None,
    ) -> dict[str, Array]:
        """Send one request and wait for its outputs (RequestFailedError when the fleet answers an error)."""
        if self._reply.kind is not ReplyKind.STREAM:
            raise RuntimeError("infer() needs reply=ReplyKind.STREAM; use submit() and wait_result()")
        future: asyncio.Future[ProducerResult] = asyncio.get_running_loop().create_future()
        chosen = self._lane if lane is None else Lane.parse(lane)
        await self._send(model, inputs, version, None, outputs, parameters, future, chosen)
        return (await future).unwrap()

    async def results(self, count: int | None = None) -> AsyncIterator[ProducerResult]:
        """Results of submitted requests as they arrive (any order); ends after ``count`` or on stop."""
        received = 0
        while count is None or received < count:
            item = await self._results.get()
            if item is None:
                self._results.put_nowait(None)  # later iterators end too
                return
            received += 1
            yield item

    async def stored_results(self, request_ids: Sequence[str]) -> dict[str, ProducerResult]:
        """Results already stored in Redis for ``request_ids`` (one MGET); ids without one are left out."""
        if self._redis is None:
            raise RuntimeError("the producer is not started")
        if not request_ids:
            return {}
        try:
            raw = await self._redis.mget([self._names.result_key(i) for i in request_ids])
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        found: dict[str, ProducerResult] = {}
        for request_id, value in zip(request_ids, raw, strict=True):
            if value is not None:
                with contextlib.suppress(SchemaError):
                    found[request_id] = ProducerResult.from_response(InferenceResponse.from_bytes(value))
        return found

    async def result(self, request_id: str) -> ProducerResult | None:
        """The stored result of ``request_id`` (ReplyKind.RESULT), or None while there is none."""
        return (await self.stored_results([request_id])).get(request_id)

    async def wait_result(self, request_id: str, timeout_s: float | None = None) -> ProducerResult:
        """Poll the stored result of ``request_id`` until it exists (TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(self._timeout_s + _GRACE_S if timeout_s is None else timeout_s):
            delay = 0.005
            while True:
                found = await self.result(request_id)
                if found is not None:
                    return found
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged by Kafka."""
        if self._producer is not None:
            await self._producer.flush()

    # sending ---------------------------------------------------------------------
    async def _send(
        self,
        model: str,
        inputs: Mapping[str, Array],
        version: str | None,
        request_id: str | None,
        outputs: Sequence[str],
        parameters: Mapping[str, ParameterValue] | None,
        future: asyncio.Future[ProducerResult] | None,
        lane: Lane,
    ) -> str:
        producer = self._producer
        if producer is None:
            raise RuntimeError("the producer is not started (or stopped)")
        request_id = request_id or secrets.token_hex(12)
        if version is None:  # where the gateway would send it: the default, or the traffic split's pick
            route = await self._route(model)
            version = route.default if route.split is None else route.split.pick(request_id)
        record = await self.model_record(model, version)
        tensors = tuple(Tensor.from_numpy(name, np.asarray(array)) for name, array in inputs.items())
        check_inputs(record.inputs, tensors, batched=record.batched)
        unknown = sorted(set(outputs) - {spec.name for spec in record.outputs})
        if unknown:
            raise SchemaError(f"unknown output(s) {unknown} of model {model!r}", code=ErrorCode.INVALID_INPUT)
        if request_id in self._pending:
            raise ValueError(f"request id {request_id!r} is already in flight")
        await self._slots.acquire()
        request = InferenceRequest(
            id=request_id,
            model=model,
            version=record.version,
            inputs=tensors,
            reply=self._reply,
            outputs=tuple(outputs),
            parameters=dict(parameters or {}),
            deadline_ms=now_ms() + self._timeout_s * 1000,
        )
        value = request.to_bytes()
        if len(value) > self._settings.kafka.max_request_bytes:
            self._slots.release()
            raise SchemaError(
                f"request of {len(value)} bytes exceeds FLEET_KAFKA_MAX_REQUEST_BYTES "
                f"({self._settings.kafka.max_request_bytes})",
                code=ErrorCode.PAYLOAD_TOO_LARGE,
            )
        stashed = self._stash.pop(request_id, None)
        pending = _Pending(model, record.version, time.monotonic() + self._timeout_s + _GRACE_S, future)
        self._pending[request_id] = pending
        if stashed is not None:  # answered already (a re-sent request): first result wins, nothing to send
            self._complete(stashed)
            return request_id
        topic = self._names.request_topic(model, lane)
        try:
            partitions = self._partitions.get(topic) or await self._topic_partitions(producer, topic)
            self._turn += 1
            # Round robin instead of hashing the key: same spread, without aiokafka's pure-Python murmur2.
            partition = partitions[self._turn % len(partitions)]
            sent = await producer.send(
                topic, value, key=request_id.encode(), partition=partition, headers=_VERSION_HEADER
            )
        except KafkaError as exc:
            self._pending.pop(request_id, None)
            self._slots.release()
            raise BackendUnavailableError(f"Kafka refused the request: {exc}") from exc
        sent.add_done_callback(lambda done: self._on_sent(request_id, done))
        return request_id

    async def _topic_partitions(self, producer: AIOKafkaProducer, topic: str) -> list[int]:
        partitions = sorted(await producer.partitions_for(topic))
        if not partitions:
            raise KafkaError(f"topic {topic} has no partitions")
        self._partitions[topic] = partitions
        return partitions

    def _on_sent(self, request_id: str, done: asyncio.Future[Any]) -> None:
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            pending = self._pending.get(request_id)
            if pending is not None:
                message = f"Kafka did not take the request: {error or 'cancelled'}"
                failed = ProducerResult.failed(
                    request_id, pending.model, pending.version, ErrorCode.BACKEND_UNAVAILABLE, message
                )
                self._complete(failed)
        elif self._reply.kind is not ReplyKind.STREAM:
            # Nobody reads a stream: the request's slot frees once Kafka holds it.
            if self._pending.pop(request_id, None) is not None:
                self._slots.release()

    def _complete(self, result: ProducerResult) -> None:
        """Hand ``result`` to its waiter (or stash it when nobody waits) and free its slot."""
        pending = self._pending.pop(result.request_id, None)
        if pending is None:
            self._stash[result.request_id] = result
            if len(self._stash) > _STASH:
                self._stash.popitem(last=False)
            return
        self._slots.release()
        if not result.model:  # failed before anyone answered: fill in what the request was
            result = ProducerResult(result.request_id, pending.model, pending.version, {}, result.error)
        if pending.future is not None:
            if not pending.future.done():
                pending.future.set_result(result)
        else:
            self._results.put_nowait(result)

    # receiving -------------------------------------------------------------------
    async def _reply_routine(self) -> None:
        backoff = _BACKOFF_MIN_S
        since_trim = 0
        next_sweep = time.monotonic() + _SWEEP_EVERY_S
        while not self._closing:
            try:
                if self._reader is not None:
                    entries = await self._reader.xread(
                        {self.stream: self._last_id}, count=_READ_COUNT, block=self._block_ms
                    )
                    since_trim += self._dispatch(entries)
                    if since_trim >= _TRIM_EVERY:
                        await self._reader.xtrim(self.stream, minid=self._last_id, approximate=True)
                        since_trim = 0
                else:
                    await asyncio.sleep(_SWEEP_EVERY_S)
                backoff = _BACKOFF_MIN_S
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("reply stream %s unreadable (%s); retrying in %.2fs", self.stream, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            except Exception:  # a bug must not leave requests waiting on a dead routine
                log.exception("reply routine of %s failed; restarting it", self.client_id)
                await asyncio.sleep(_BACKOFF_MAX_S)
            now = time.monotonic()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + _SWEEP_EVERY_S

    def _dispatch(self, entries: Any) -> int:
        count = 0
        for _, stream_entries in entries or ():
            for entry_id, fields in stream_entries:
                self._last_id = _text(entry_id)
                count += 1
                raw = fields.get(b"r") if isinstance(fields, dict) else None
                try:
                    response = InferenceResponse.from_bytes(raw) if isinstance(raw, bytes) else None
                except SchemaError as exc:
                    log.warning("undecodable reply dropped from %s: %s", self.stream, exc.message)
                    continue
                if response is not None:
                    self._complete(ProducerResult.from_response(response))
        return count

    def _sweep(self, now: float) -> None:
        expired = [rid for rid, p in self._pending.items() if p.expires <= now]
        for request_id in expired:
            self._complete(
                ProducerResult.failed(
                    request_id,
                    "",
                    "",
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"no answer within {self._timeout_s:g} s (is a worker serving the model?)",
                )
            )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
