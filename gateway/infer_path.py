"""The protocol-neutral part of serving a model: registry lookup, routing, checks, publish, wait for the reply.

One :class:`InferPath` per gateway holds what every protocol's requests share: the admission limits,
serviceability, deadline-aware shedding, coalescing and the draining flag, so a request counts against the same
limits whichever protocol brought it, and is answered with the same :class:`~schemas.FleetError` codes. The HTTP
routes (``gateway.routes``) parse the OIP body and map errors to HTTP; the gRPC service (``gateway.grpc_service``)
calls :meth:`InferPath.infer` with a request already decoded into an :class:`~gateway.protocol.InferBody`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from redis.exceptions import RedisError

from schemas import (
    ErrorCode,
    FleetError,
    InferenceRequest,
    InferenceResponse,
    Lane,
    ModelRecord,
    ModelRegistry,
    ReplyAddress,
    ReplyKind,
    SchemaError,
    check_inputs,
    check_model_name,
    check_version,
    now_ms,
)

from .backends import Backends
from .deadlines import Deadlines
from .errors import (
    BackendDownError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    VersionNotFoundError,
    WorkerReplyError,
)
from .limits import Admission, Ticket, check_tensor_elements
from .metrics import GatewayMetrics
from .protocol import InferBody, check_outputs
from .publisher import coalescable
from .serviceability import ServiceabilityView, Verdict
from .shedding import ModelQueues

#: Metrics label of requests for models that do not resolve.
UNKNOWN_MODEL = "_unknown"
_MAX_TOPICS = 10_000  # request topics remembered (model, lane); all forgotten at once past it


@dataclass(frozen=True)
class Served:
    """A worker's successful answer and the model version that gave it."""

    record: ModelRecord
    response: InferenceResponse


class Attempt:
    """One infer request while it is served: counted in flight, its admission ticket released and its outcome
    observed (model and version labels, error code, duration) when the ``with`` block ends."""

    __slots__ = ("_loop", "_metrics", "label", "started", "started_ms", "ticket", "version_label")

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self.started = self._loop.time()
        self.started_ms = now_ms()
        self.label = self.version_label = UNKNOWN_MODEL
        self.ticket: Ticket | None = None

    def resolved(self, record: ModelRecord) -> None:
        """Label the metrics with ``record``'s model and version."""
        self.label, self.version_label = record.name, record.version

    def __enter__(self) -> Attempt:
        self._metrics.in_flight.inc()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is None:
            code = None
        elif isinstance(error, FleetError):
            code = error.code.value
        else:
            code = ErrorCode.INTERNAL.value  # something unexpected (or a cancellation)
        if self.ticket is not None:
            self.ticket.release()
        self._metrics.in_flight.dec()
        self._metrics.observe(self.label, self._loop.time() - self.started, code, self.version_label)


class InferPath:
    """One gateway's request path, shared by the HTTP routes and the gRPC service."""

    def __init__(self, backends: Backends, wire_ids: Callable[[], str]) -> None:
        self._b = backends
        settings = backends.settings
        self._reply = ReplyAddress(ReplyKind.STREAM, backends.listener.stream)
        self.new_wire_id = wire_ids
        #: Would a request be served (model readiness, and sync requests that nothing can serve fail fast).
        self.serviceability = ServiceabilityView(
            backends.redis,
            backends.names,
            ttl_s=settings.registry_cache_ttl_s,
            timeout_s=settings.backend_timeout_s,
            external_scaler=settings.external_scaler,
            return_grace_s=settings.worker_return_grace_s,
        )
        backends.publisher.configure_coalescing(settings.coalesce, self.serviceability.reads_batches)
        #: True once the gateway is stopping.
        self.draining = False
        self.admission = Admission(settings.max_in_flight, settings.max_in_flight_bytes)
        #: Sync requests waiting per model and their reply rate (deadline-aware shedding).
        self.queues = ModelQueues() if settings.shed_late_requests else None
        #: Sync requests' deadlines, on one shared loop timer.
        self._deadlines = Deadlines()
        #: Request topic per (model, lane): naming one checks the model name, once per model is enough.
        self._topics: dict[tuple[str, Lane], str] = {}

    @property
    def registry(self) -> ModelRegistry:
        """The model registry (uncached)."""
        return self._b.cache.registry

    async def readiness_problems(self) -> list[str]:
        """Why the gateway cannot serve now (a backend unreachable, replies not flowing, stopping); [] when ready."""
        redis_problem, kafka_problem = await asyncio.gather(self._redis_problem(), self._b.publisher.check())
        problems = [
            f"{name}: {problem}" for name, problem in (("redis", redis_problem), ("kafka", kafka_problem)) if problem
        ]
        if self.draining:
            problems.insert(0, "the gateway is stopping")
        elif not self._b.listener.healthy and not redis_problem:
            problems.append(f"replies: {self._b.listener.last_error}")
        return problems

    async def _redis_problem(self) -> str | None:
        timeout = self._b.settings.backend_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self._b.redis.ping()
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except (RedisError, OSError) as exc:
            return str(exc) or type(exc).__name__
        return None

    def attempt(self) -> Attempt:
        """Bookkeeping of one infer request, started now: ``with path.attempt() as attempt: ...``."""
        return Attempt(self._b.metrics)

    async def record(self, model: str, version: str | None) -> ModelRecord:
        """The registered record (the default version when ``version`` is empty); 404 errors otherwise."""
        try:
            check_model_name(model)
        except SchemaError:
            raise ModelNotFoundError(model) from None
        if version:
            try:
                check_version(version)
            except SchemaError:
                raise VersionNotFoundError(model, version) from None
        return await self._b.cache.get(model, version or None)

    async def versions(self, model: str) -> list[str]:
        """Every registered version of ``model``."""
        try:
            async with asyncio.timeout(self._b.settings.backend_timeout_s):
                return await self._b.cache.registry.versions(model)
        except TimeoutError:
            raise BackendDownError("redis", "listing versions took too long") from None
        except FleetError as exc:
            raise BackendDownError("redis", exc.message) from None

    async def verdict(self, record: ModelRecord) -> Verdict:
        """Whether a live worker serves ``record`` now, and why not (503 when requests cannot be queued at all)."""
        if not (self._b.publisher.connected and self._b.listener.healthy):
            raise BackendDownError("kafka/redis", "requests cannot be queued right now")
        return await self.serviceability.verdict(record)

    async def model_ready(self, record: ModelRecord) -> bool:
        """Whether a live worker serves ``record`` now (503 when requests cannot be queued at all)."""
        return (await self.verdict(record)).ready

    def timeout_ms(self, body: InferBody, deadline_s: float | None) -> float:
        """The request's timeout: the caller's deadline (``deadline_s`` from now) when it set one, else the
        body's ``timeout_ms`` parameter, else the default; capped at ``max_timeout_s``."""
        settings = self._b.settings
        requested = deadline_s * 1000.0 if deadline_s is not None else body.timeout_ms
        if requested is None:
            return settings.default_timeout_s * 1000.0
        if not math.isfinite(requested) or requested <= 0:
            raise InvalidRequestError(f"timeout {requested:g} ms must be a positive number")
        return min(requested, settings.max_timeout_s * 1000.0)

    async def infer(
        self, model: str, version: str | None, body: InferBody, size: int, deadline_s: float | None
    ) -> Served:
        """Serve one decoded request of ``size`` bytes (as received): the same admission, checks, routing,
        metrics and errors as an HTTP infer; WorkerReplyError when the worker answered with an error."""
        with self.attempt() as attempt:
            attempt.ticket = self.admission.admit(size)
            check_tensor_elements(body, self._b.settings.max_tensor_elements)
            record = await self.record(model, version)
            attempt.label = record.name
            if not version:  # unversioned: the model's traffic split picks
                record = await self._b.cache.routed(record, body.id)
            attempt.resolved(record)
            timeout_ms = self.timeout_ms(body, deadline_s)
            check_inputs(record.inputs, body.inputs, batched=record.batched)
            check_outputs((s.name for s in record.outputs), body)
            response = await self.round_trip(self.new_wire_id(), record, body, attempt, timeout_ms)
            return Served(record, response)

    async def round_trip(
        self, wire_id: str, record: ModelRecord, body: InferBody, attempt: Attempt, timeout_ms: float
    ) -> InferenceResponse:
        """Publish ``body`` as request ``wire_id`` to ``record``'s topic and wait for the worker's successful
        answer: 503 at once when the gateway is stopping, replies do not flow, nothing can serve the model or
        the model's queue would not be served in time; 504 past the deadline; WorkerReplyError when the
        worker answered with an error."""
        listener = self._b.listener
        if self.draining:
            raise BackendDownError("gateway", "the gateway is stopping")
        if not listener.healthy:
            raise BackendDownError("redis", listener.last_error)
        await self.serviceability.check(record)  # 503 now rather than 504 later when nothing can serve it
        message = InferenceRequest(
            id=wire_id,
            model=record.name,
            version=record.version,
            inputs=body.inputs,
            reply=self._reply,
            outputs=tuple(o.name for o in body.outputs),
            parameters=body.parameters,
            deadline_ms=attempt.started_ms + timeout_ms,
            created_ms=attempt.started_ms,
        )
        deadline = attempt.started + timeout_ms / 1000.0
        queues = self.queues
        if queues is not None:  # 503 now rather than a 504 after waiting out the timeout
            queues.admit(record.name, deadline - asyncio.get_running_loop().time())
        answered = False
        # Register before publishing: a fast worker may answer before publish() returns.
        future = listener.expect(wire_id)
        try:
            async with self._deadlines.at(deadline):
                topic = self._topic(record.name, body.lane or Lane.INTERACTIVE)
                await self._b.publisher.publish(topic, message, coalesce=coalescable(record))
                response = await future
                answered = True
        except TimeoutError:
            raise DeadlineExceededError(record.name, timeout_ms) from None
        finally:
            listener.discard(wire_id)
            if queues is not None:
                queues.done(record.name, answered)
        if response.error is not None:
            raise WorkerReplyError(response.error.code, response.error.message)
        return response

    def _topic(self, model: str, lane: Lane) -> str:
        topic = self._topics.get((model, lane))
        if topic is None:
            if len(self._topics) >= _MAX_TOPICS:
                self._topics.clear()
            topic = self._topics[model, lane] = self._b.names.request_topic(model, lane)
        return topic
