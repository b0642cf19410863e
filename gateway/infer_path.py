"""The protocol-neutral part of serving a model: registry lookup, routing, checks, publish, wait for the reply.

The gRPC service uses it with a request already decoded into an :class:`~schemas.oip.InferBody`; it shares
the HTTP routes' state (admission limits, serviceability, deadline-aware shedding, draining) through the
:class:`~gateway.routes.Routes` object, so a request counts against the same limits whichever protocol
brought it, and is answered with the same :class:`~schemas.FleetError` codes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

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

from .errors import (
    BackendDownError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    VersionNotFoundError,
    WorkerReplyError,
)
from .limits import check_tensor_elements
from .protocol import InferBody, check_outputs
from .publisher import coalescable
from .routes import Backends, Routes

_UNKNOWN_MODEL = "_unknown"  # metrics label of requests for models that do not resolve


@dataclass(frozen=True)
class Served:
    """A worker's successful answer and the model version that gave it."""

    record: ModelRecord
    response: InferenceResponse


class InferPath:
    """One gateway's request path, for callers that are not the aiohttp routes."""

    def __init__(self, backends: Backends, routes: Routes, wire_ids: Callable[[], str]) -> None:
        self._b = backends
        self._routes = routes
        self._reply = ReplyAddress(ReplyKind.STREAM, backends.listener.stream)
        self.new_wire_id = wire_ids

    @property
    def registry(self) -> ModelRegistry:
        """The model registry (uncached)."""
        return self._b.cache.registry

    @property
    def draining(self) -> bool:
        """True once the gateway is stopping."""
        return self._routes.draining

    async def readiness_problems(self) -> list[str]:
        """Why the gateway cannot serve now; [] when ready (as ``/v2/health/ready``)."""
        return await self._routes.readiness_problems()

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

    async def model_ready(self, record: ModelRecord) -> bool:
        """Whether a live worker serves ``record`` now (503 when requests cannot be queued at all)."""
        if not (self._b.publisher.connected and self._b.listener.healthy):
            raise BackendDownError("kafka/redis", "requests cannot be queued right now")
        return (await self._routes.serviceability.verdict(record)).ready

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
        loop = asyncio.get_running_loop()
        started, started_ms = loop.time(), now_ms()
        label = version_label = _UNKNOWN_MODEL
        code: str | None = ErrorCode.INTERNAL.value  # stays so when something unexpected is raised
        metrics = self._b.metrics
        metrics.in_flight.inc()
        ticket = None
        try:
            ticket = self._routes.admission.admit(size)
            check_tensor_elements(body, self._b.settings.max_tensor_elements)
            record = await self.record(model, version)
            label = record.name
            if not version:  # unversioned: the model's traffic split picks
                record = await self._b.cache.routed(record, body.id)
            version_label = record.version
            timeout_ms = self.timeout_ms(body, deadline_s)
            check_inputs(record.inputs, body.inputs, batched=record.batched)
            check_outputs((s.name for s in record.outputs), body)
            response = await self._round_trip(record, body, started, started_ms, timeout_ms)
            if response.error is not None:
                raise WorkerReplyError(response.error.code, response.error.message)
            code = None
            return Served(record, response)
        except FleetError as exc:
            code = exc.code.value
            raise
        finally:
            if ticket is not None:
                ticket.release()
            metrics.in_flight.dec()
            metrics.observe(label, loop.time() - started, code, version_label)

    async def _round_trip(
        self, record: ModelRecord, body: InferBody, started: float, started_ms: float, timeout_ms: float
    ) -> InferenceResponse:
        listener = self._b.listener
        if self.draining:
            raise BackendDownError("gateway", "the gateway is stopping")
        if not listener.healthy:
            raise BackendDownError("redis", listener.last_error)
        await self._routes.serviceability.check(record)  # UNAVAILABLE now rather than a deadline later
        wire_id = self.new_wire_id()
        message = InferenceRequest(
            id=wire_id,
            model=record.name,
            version=record.version,
            inputs=body.inputs,
            reply=self._reply,
            outputs=tuple(o.name for o in body.outputs),
            parameters=body.parameters,
            deadline_ms=started_ms + timeout_ms,
            created_ms=started_ms,
        )
        deadline = started + timeout_ms / 1000.0
        queues = self._routes.queues
        if queues is not None:
            queues.admit(record.name, deadline - asyncio.get_running_loop().time())
        answered = False
        future = listener.expect(wire_id)  # before publishing: a fast worker may answer before publish() returns
        try:
            async with asyncio.timeout_at(deadline):
                topic = self._b.names.request_topic(record.name, body.lane or Lane.INTERACTIVE)
                await self._b.publisher.publish(topic, message, coalesce=coalescable(record))
                response = await future
                answered = True
                return response
        except TimeoutError:
            raise DeadlineExceededError(record.name, timeout_ms) from None
        finally:
            listener.discard(wire_id)
            if queues is not None:
                queues.done(record.name, answered)
