"""``FleetProducer``: the direct Kafka producer client, composed of its parts.

Routing (:mod:`.routing`) picks the version, the inputs are checked against its signature, the
in-flight table (:mod:`.results`) takes a slot, the sender (:mod:`.sender`) enqueues the envelope, and
a :class:`common.reply_stream.ReplyStream` hands the workers' answers back to the table.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from common.reply_stream import ReplyStream
from common.wake import WakeNotes
from schemas import (
    BackendUnavailableError,
    BatchingConfig,
    ErrorCode,
    FleetSettings,
    Framework,
    InferenceRequest,
    Lane,
    ModelRecord,
    ModelRegistry,
    Names,
    ParameterValue,
    ReplyAddress,
    ReplyKind,
    SchemaError,
    Tensor,
    check_inputs,
    now_ms,
)
from schemas.constants import RESULT_TTL_S
from schemas.eventloop import AsyncService
from schemas.pipeline_plan import PipelinePlan
from schemas.pipelines import PipelineStore, check_pipeline, first_requests, resolve, step_records

from .results import GRACE_S, Array, PendingTable, ProducerResult, stored_results
from .routing import RoutingCache
from .sender import RequestSender

log = logging.getLogger("fleet.producer")

_READ_COUNT = 2000
_TRIM_EVERY = 5000


class FleetProducer(AsyncService):
    """``async with FleetProducer(settings) as p: y = await p.infer("tiny", {"x": array})``.

    ``lane`` picks the model's request topic: ``interactive`` (served first) or ``bulk`` (batch pipelines,
    served with the idle capacity); ``submit(lane=...)`` overrides it per request.
    ``client_id`` names the reply stream (default: random); a client that must find its replies again
    after a restart (``fleet batch run --resume``) passes the same id. ``linger_ms`` and ``max_batch_bytes``
    (per partition) let aiokafka fill bigger produce requests: with aiokafka's 16 KiB default a full batch
    makes ``send()`` wait, which caps a one-row-per-record stream well below 10,000 records/s.
    ``delete_stream`` drops the reply stream on stop. ``wake_interval_s``: the partition each request landed on is
    named on the namespace's wake channel at most once per partition per this many seconds (`common.wake`), so a
    pool worker that let it sleep fetches it at once; 0 = off.
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
        wake_interval_s: float = 1.0,
    ) -> None:
        if reply is ReplyKind.NONE:
            raise ValueError("reply must be stream, result or topic (somebody has to get the answer)")
        if (reply is ReplyKind.TOPIC) != bool(reply_topic):
            raise ValueError("reply_topic names the output topic, and only with reply=ReplyKind.TOPIC")
        self._settings = settings
        self._names = Names(settings.namespace)
        self.client_id = client_id or f"p-{secrets.token_hex(6)}"
        self.stream = self._names.client_reply_stream(self.client_id)
        target = self.stream if reply is ReplyKind.STREAM else (reply_topic or "")
        # A stream reply stores its result only when asked (ttl_s): this client may resume (stored_results).
        ttl_s = result_ttl_s or (RESULT_TTL_S if reply is ReplyKind.STREAM else 0)
        self._reply = ReplyAddress(reply, target, ttl_s)
        self._pipelines: dict[tuple[str, int], tuple[PipelinePlan, ModelRecord]] = {}
        self._lane = Lane.parse(lane)
        self._timeout_s = timeout_s
        self._delete_stream = delete_stream
        self._routing_ttl_s = routing_ttl_s
        self._table = PendingTable(max_in_flight, timeout_s)
        self._wake_interval_s = wake_interval_s
        self._wake: WakeNotes | None = None
        self._sender = RequestSender(
            settings.kafka,
            linger_ms=linger_ms,
            max_batch_bytes=max_batch_bytes,
            names=self._names,
            on_landed=self._landed if wake_interval_s > 0 else None,
        )
        self._reader: ReplyStream | None = None
        if reply is ReplyKind.STREAM:
            self._reader = ReplyStream(
                settings.redis,
                self.stream,
                lambda response: self._table.complete(ProducerResult.from_response(response)),
                read_count=_READ_COUNT,
                trim_every=_TRIM_EVERY,
                logger=log,
            )
        self._redis: Any = None
        self._routing: RoutingCache | None = None
        self._started = False
        self._closing = False

    # lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Connect to Kafka and Redis; replies written to the stream from now on are all received."""
        if self._started or self._closing:
            raise RuntimeError("a FleetProducer starts once")
        self._redis = self._settings.redis.client()
        self._routing = RoutingCache(ModelRegistry(self._redis, self._names), self._routing_ttl_s)
        self._wake = WakeNotes(self._redis, self._names, self._wake_interval_s)
        self._wake.start()
        try:
            await self._sender.start()
            if self._reader is not None:
                try:
                    await self._reader.seek_tail()
                except (RedisError, OSError, TimeoutError) as exc:
                    raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc
        except BaseException:
            await self._close(delete_stream=False)
            raise
        self._started = True
        await self._table.start()
        if self._reader is not None:
            await self._reader.start()

    async def stop(self) -> None:
        """Flush sends, stop reading, fail what is still waiting, close the clients; idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._reader is not None:
            await self._reader.halt()
        await self._table.stop()
        await self._close(delete_stream=self._delete_stream)

    async def _close(self, *, delete_stream: bool) -> None:
        if self._reader is not None:
            await self._reader.close(delete_stream=delete_stream)
        await self._sender.stop()
        wake, self._wake = self._wake, None
        if wake is not None:
            await wake.stop()
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()

    def _landed(self, topic: str, partition: int) -> None:
        if self._wake is not None:
            self._wake.note(topic, partition)

    # the API -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return self._table.in_flight

    async def model_record(self, model: str, version: str | None = None) -> ModelRecord:
        """The registry record of ``model`` at ``version`` (None: its default version now).

        Versions are immutable, so a record is cached for the client's lifetime; the default is re-read
        every ``routing_ttl_s``.
        """
        return await self._routes().record(model, version)

    def _routes(self) -> RoutingCache:
        if self._routing is None or self._redis is None:
            raise RuntimeError("the producer is not started")
        return self._routing

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

    async def pipeline(self, name: str, version: int | None = None) -> tuple[PipelinePlan, ModelRecord]:
        """Pipeline ``name`` (its current version unless ``version``) with its steps' versions resolved, and a
        record that describes it as one model (its name and version, its inputs and outputs) for callers that
        read or write tensors by a model's signature (``fleet batch run --pipeline``)."""
        if self._redis is None:
            raise RuntimeError("the producer is not started")
        cached = self._pipelines.get((name, version)) if version is not None else None
        if cached is not None:  # a stored version never changes; its steps' defaults are read when it is first used
            return cached
        plan = await PipelineStore(self._redis, self._names).get(name, version)
        records = await step_records(plan, self._routes().record)
        signature = check_pipeline(plan, records)
        entries = [records[n] for n in plan.entry_steps()]
        described = ModelRecord(
            name=plan.name,
            version=str(plan.version),
            framework=Framework.PYTHON,
            artifact=f"pipeline:{plan.name}",
            sha256="",
            inputs=signature.inputs,
            outputs=signature.outputs,
            batching=entries[0].batching if all(r.batched for r in entries) else BatchingConfig(),
            factory="pipeline",
        )
        resolved = (resolve(plan, records), described)
        self._pipelines[(name, plan.version)] = resolved
        return resolved

    async def submit_pipeline(
        self,
        name: str,
        inputs: Mapping[str, Array],
        *,
        version: int | None = None,
        request_id: str | None = None,
        lane: Lane | str | None = None,
    ) -> str:
        """Send one request of pipeline ``name`` to its entry steps; its answer (the pipeline's outputs, from
        the last step's worker) arrives through :meth:`results` as a model's does."""
        if not self._started or self._closing:
            raise RuntimeError("the producer is not started (or stopped)")
        plan, described = await self.pipeline(name, version)
        chosen = self._lane if lane is None else Lane.parse(lane)
        request_id = request_id or secrets.token_hex(12)
        tensors = tuple(Tensor.from_numpy(n, np.asarray(array)) for n, array in inputs.items())
        check_inputs(described.inputs, tensors, batched=described.batched)
        if request_id in self._table:
            raise ValueError(f"request id {request_id!r} is already in flight")
        deadline = now_ms() + self._timeout_s * 1000
        requests = first_requests(plan, request_id, tensors, self._reply, chosen.value, deadline)
        await self._table.acquire()
        if self._table.add(request_id, name, described.version, None):
            return request_id  # answered already (a re-sent request): nothing to send
        try:
            sent = [
                await self._sender.send(self._names.request_topic(r.model, chosen), r.id, r.to_bytes())
                for r in requests
            ]
        except BaseException:
            self._table.forget(request_id)
            raise
        sent[0].add_done_callback(lambda done: self._on_sent(request_id, done))
        return request_id

    def results(self, count: int | None = None) -> AsyncIterator[ProducerResult]:
        """Results of submitted requests as they arrive (any order); ends after ``count`` or on stop."""
        return self._table.results(count)

    async def stored_results(self, request_ids: Sequence[str]) -> dict[str, ProducerResult]:
        """Results already stored in Redis for ``request_ids`` (one round trip); ids without one are left out."""
        if self._redis is None:
            raise RuntimeError("the producer is not started")
        try:
            return await stored_results(self._redis, self._names, request_ids)
        except RedisError as exc:
            raise BackendUnavailableError(f"Redis unavailable: {exc}") from exc

    async def result(self, request_id: str) -> ProducerResult | None:
        """The stored result of ``request_id`` (ReplyKind.RESULT), or None while there is none."""
        return (await self.stored_results([request_id])).get(request_id)

    async def wait_result(self, request_id: str, timeout_s: float | None = None) -> ProducerResult:
        """Poll the stored result of ``request_id`` until it exists (TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(self._timeout_s + GRACE_S if timeout_s is None else timeout_s):
            delay = 0.005
            while True:
                found = await self.result(request_id)
                if found is not None:
                    return found
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged by Kafka."""
        await self._sender.flush()

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
        if not self._started or self._closing:
            raise RuntimeError("the producer is not started (or stopped)")
        routes = self._routes()
        request_id = request_id or secrets.token_hex(12)
        if version is None:  # where the gateway would send it: the default, or the traffic split's pick
            version = await routes.version_for(model, request_id)
        record = await routes.record(model, version)
        tensors = tuple(Tensor.from_numpy(name, np.asarray(array)) for name, array in inputs.items())
        check_inputs(record.inputs, tensors, batched=record.batched)
        unknown = sorted(set(outputs) - {spec.name for spec in record.outputs})
        if unknown:
            raise SchemaError(f"unknown output(s) {unknown} of model {model!r}", code=ErrorCode.INVALID_INPUT)
        if request_id in self._table:
            raise ValueError(f"request id {request_id!r} is already in flight")
        await self._table.acquire()
        try:
            value = self._encode(request_id, model, record.version, tensors, outputs, parameters)
        except BaseException:
            self._table.release()
            raise
        if self._table.add(request_id, model, record.version, future):
            return request_id  # answered already (a re-sent request): nothing to send
        try:
            sent = await self._sender.send(self._names.request_topic(model, lane), request_id, value)
        except BaseException:
            self._table.forget(request_id)
            raise
        sent.add_done_callback(lambda done: self._on_sent(request_id, done))
        return request_id

    def _encode(
        self,
        request_id: str,
        model: str,
        version: str,
        tensors: tuple[Tensor, ...],
        outputs: Sequence[str],
        parameters: Mapping[str, ParameterValue] | None,
    ) -> bytes:
        request = InferenceRequest(
            id=request_id,
            model=model,
            version=version,
            inputs=tensors,
            reply=self._reply,
            outputs=tuple(outputs),
            parameters=dict(parameters or {}),
            deadline_ms=now_ms() + self._timeout_s * 1000,
        )
        value = request.to_bytes()
        limit = self._settings.kafka.max_request_bytes
        if len(value) > limit:
            raise SchemaError(
                f"request of {len(value)} bytes exceeds FLEET_KAFKA_MAX_REQUEST_BYTES ({limit})",
                code=ErrorCode.PAYLOAD_TOO_LARGE,
            )
        return value

    def _on_sent(self, request_id: str, done: asyncio.Future[Any]) -> None:
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            message = f"Kafka did not take the request: {error or 'cancelled'}"
            self._table.fail(request_id, ErrorCode.BACKEND_UNAVAILABLE, message)
        elif self._reply.kind is not ReplyKind.STREAM:
            self._table.forget(request_id)  # nobody reads a stream: the slot frees once Kafka holds it
