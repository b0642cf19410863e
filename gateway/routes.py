"""The HTTP routes of the Open Inference Protocol v2 (plus ``/metrics``) and the infer request path."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from common import tracing
from schemas import ErrorCode, Framework, ModelRecord, TensorSpec, check_inputs
from schemas.oip import Rendered

from .backends import Backends
from .errors import (
    REQUEST_ID_HEADER,
    WIRE_ID_KEY,
    BackendDownError,
    ClientDisconnectedError,
    GatewayError,
    InvalidRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    error_response,
)
from .infer_path import UNKNOWN_MODEL, Attempt, InferPath
from .job_routes import (
    ASYNC_QUERY,
    IDEMPOTENCY_HEADER,
    PREFER_HEADER,
    JobRoutes,
    check_idempotency_key,
    wants_async,
)
from .jobs import JobStore
from .limits import LargeBodies, Ticket, check_declared_body
from .protocol import (
    HEADER_LENGTH,
    LANE_HEADER,
    TIMEOUT_HEADER,
    InferBody,
    check_outputs,
    choose_lane,
    json_response,
    parse_timeout_ms,
    render_infer,
)
from .repository import RepositoryRoutes

log = logging.getLogger("fleet.gateway")

SERVER_NAME = "inference-fleet"
#: OIP extensions this server implements.
EXTENSIONS = ("binary_tensor_data", "parameters")
PLATFORMS = {
    Framework.ONNX: "onnxruntime_onnx",
    Framework.TORCHSCRIPT: "pytorch_torchscript",
    Framework.TORCH: "pytorch",
}
_MODEL = "/v2/models/{model}"
#: A read-only route's JSON document and HTTP status.
Answer = tuple[dict[str, Any], int]
#: ``GET /v2/health/live``'s answer.
LIVE: Answer = ({"live": True}, 200)
_VERSIONED = "/v2/models/{model}/versions/{version}"


class Routes:
    """Request handlers; ``add_to(app)`` registers them."""

    def __init__(self, backends: Backends, wire_ids: Callable[[], str]) -> None:
        self._b = backends
        #: The protocol-neutral request path (admission, serviceability, shedding, draining), shared with gRPC.
        self.path = InferPath(backends, wire_ids)
        self.serviceability = self.path.serviceability
        self.admission = self.path.admission
        store = JobStore(backends.redis, backends.names, backends.settings.backend_timeout_s)
        self.jobs = JobRoutes(backends.settings, backends.names, store, backends.publisher)
        settings = backends.settings
        #: Bodies over the inline size take turns (as many as there are decode processes).
        self.large_bodies = LargeBodies(
            settings.decode_processes, settings.decode_inline_bytes, settings.backend_timeout_s
        )

    @property
    def draining(self) -> bool:
        """True once the gateway is stopping (set by the Gateway; every protocol's requests are refused)."""
        return self.path.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.path.draining = value

    def add_infer_to(self, app: web.Application) -> None:
        """Register the infer routes on ``app``; call it before any other ``/v2/models/...`` route.

        aiohttp tries the routes under one path prefix in the order they were added, one regular expression
        each, so the route nearly every request takes goes first (it shadows none: no other route's path
        ends in ``/infer`` with as many parts).
        """
        for prefix in (_MODEL, _VERSIONED):
            infer = tracing.traced_http(self.infer)  # self.infer itself when tracing is off
            app.router.add_post(prefix + "/infer", infer, expect_handler=self._expect_continue)

    def add_to(self, app: web.Application) -> None:
        """Register every other route on ``app``."""
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/metrics", self.metrics)
        for prefix in (_MODEL, _VERSIONED):
            app.router.add_get(prefix, self.model_metadata)
            app.router.add_get(prefix + "/ready", self.model_ready)
        self.jobs.add_to(app)
        RepositoryRoutes(self._b.cache.registry, self._b.settings.backend_timeout_s).add_to(app)

    # server ------------------------------------------------------------------------------------
    async def server_metadata(self, request: web.Request) -> web.Response:
        """``GET /v2``: name, version and extensions."""
        return json_response(*self.server_answer())

    async def live(self, request: web.Request) -> web.Response:
        """``GET /v2/health/live``: the process answers (no backend needed)."""
        return json_response(*LIVE)

    async def ready(self, request: web.Request) -> web.Response:
        """``GET /v2/health/ready``: 200 only when Redis and Kafka are reachable and replies flow."""
        return json_response(*await self.ready_answer())

    async def metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text format, or OpenMetrics (with exemplars) when the scraper asks for it."""
        body, content_type = self._b.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    # models ------------------------------------------------------------------------------------
    async def model_metadata(self, request: web.Request) -> web.Response:
        """``GET /v2/models/{m}[/versions/{v}]``: name, versions, platform, inputs and outputs."""
        return json_response(*await self.model_answer(request.match_info["model"], request.match_info.get("version")))

    async def model_ready(self, request: web.Request) -> web.Response:
        """``GET .../ready``: 200 ``ready: true`` only when a live worker serves the model (version) now; else
        503 with ``ready: false``, the reason and its code (`gateway.serviceability`), as KServe answers."""
        model, version = request.match_info["model"], request.match_info.get("version")
        return json_response(*await self.model_ready_answer(model, version))

    # the read-only routes' answers (also `gateway.http_front`'s) -------------------------------
    def server_answer(self) -> Answer:
        """``GET /v2``'s document and status."""
        return {"name": SERVER_NAME, "version": self._b.version, "extensions": list(EXTENSIONS)}, 200

    async def ready_answer(self) -> Answer:
        """``GET /v2/health/ready``'s document and status."""
        if problems := await self.path.readiness_problems():
            return {"error": "not ready: " + "; ".join(problems)}, 503
        return {"ready": True}, 200

    async def model_answer(self, model: str, version: str | None) -> Answer:
        """``GET /v2/models/{m}[/versions/{v}]``'s document and status (404 errors for what is not registered)."""
        record = await self.path.record(model, version)
        versions = await self.path.versions(record.name) if version is None else [record.version]
        document = {
            "name": record.name,
            "versions": versions,
            "platform": PLATFORMS.get(record.framework, record.framework.value),
            "inputs": [_spec(s) for s in record.inputs],
            "outputs": [_spec(s) for s in record.outputs],
        }
        return document, 200

    async def model_ready_answer(self, model: str, version: str | None) -> Answer:
        """``GET /v2/models/{m}[/versions/{v}]/ready``'s document and status."""
        record = await self.path.record(model, version)
        verdict = await self.path.verdict(record)
        body: dict[str, Any] = {"name": record.name, "version": record.version, "ready": verdict.ready}
        if verdict.ready:
            return body, 200
        code = verdict.code or ErrorCode.MODEL_UNAVAILABLE
        body.update(state=verdict.state.value, error=verdict.reason, code=code.value)
        return body, 503

    # inference ---------------------------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.Response:
        """``POST .../infer``: validate, publish to the model's topic, wait for the worker's reply.

        With ``?async=true`` or ``Prefer: respond-async``: create a job and answer 202 at once (``job_routes``).
        """
        with self.path.attempt() as attempt:
            check_declared_body(request.content_length, self._b.settings.max_body_bytes)
            ticket = attempt.ticket = self.admission.admit(request.content_length)  # before the body: shed early
            is_async = wants_async(request.query.get(ASYNC_QUERY), request.headers.get(PREFER_HEADER))
            idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
            if idempotency_key is not None:
                if not is_async:
                    raise InvalidRequestError(f"{IDEMPOTENCY_HEADER} applies to async requests only")
                check_idempotency_key(idempotency_key)
            version = request.match_info.get("version")
            async with self.large_bodies.turn(request.content_length):
                raw = await self._read_body(request, ticket)
                record, body = await self._decoded(attempt, request.match_info["model"], version, raw, request.headers)
            record, body, timeout_ms = await self._checked(attempt, record, body, request.headers, version, is_async)
            if is_async:
                if self.draining:
                    raise BackendDownError("gateway", "the gateway is stopping")
                return await self.jobs.submit(request, record, body, raw, attempt.started_ms, timeout_ms)
            response = await self.path.round_trip(request[WIRE_ID_KEY], record, body, attempt, timeout_ms)
            rendered = render_infer(response, body, body.id or request[WIRE_ID_KEY])
        headers = {"Content-Type": rendered.content_type}
        if rendered.header_length is not None:
            headers[HEADER_LENGTH] = str(rendered.header_length)
        return web.Response(body=rendered.body, headers=headers)

    async def sync_infer(
        self, model: str, version: str | None, headers: Mapping[str, str], raw: bytes, wire_id: str
    ) -> Rendered:
        """A sync infer request whose whole body is in hand (``gateway.http_front``'s): the checks, metrics and
        errors of ``infer``, without aiohttp's request."""
        with self.path.attempt() as attempt:
            check_declared_body(len(raw), self._b.settings.max_body_bytes)
            attempt.ticket = self.admission.admit(len(raw))
            record, body = await self._decoded(attempt, model, version, raw, headers)
            record, body, timeout_ms = await self._checked(attempt, record, body, headers, version, False)
            response = await self.path.round_trip(wire_id, record, body, attempt, timeout_ms)
            return render_infer(response, body, body.id or wire_id)

    async def _decoded(
        self, attempt: Attempt, model: str, version: str | None, raw: bytes, headers: Mapping[str, str]
    ) -> tuple[ModelRecord, InferBody]:
        """The record ``model`` (``version``) resolves to and the decoded body (its datatypes known up front)."""
        record = await self.path.record(model, version)
        attempt.label = record.name
        datatypes = await self._datatypes(record, version is not None)
        return record, await self._b.decoder.decode(raw, headers.get(HEADER_LENGTH), datatypes)

    async def _checked(
        self,
        attempt: Attempt,
        record: ModelRecord,
        body: InferBody,
        headers: Mapping[str, str],
        version: str | None,
        is_async: bool,
    ) -> tuple[ModelRecord, InferBody, float]:
        """The version that serves ``body`` (a traffic split picks when none was named), the body with its lane
        and the timeout in ms, once its inputs and outputs fit the record."""
        if body.lane is None and LANE_HEADER in headers:  # no lane: interactive, left as None
            body = dataclasses.replace(body, lane=choose_lane(None, headers[LANE_HEADER]))
        if version is None:  # unversioned: the model's traffic split picks
            record = await self._b.cache.routed(record, headers.get(REQUEST_ID_HEADER) or body.id)
        attempt.resolved(record)
        settings = self._b.settings
        # An async job's deadline defaults to (and is capped at) the job TTL.
        default_s, max_s = (
            (settings.job_ttl_s, settings.job_ttl_s)
            if is_async
            else (settings.default_timeout_s, settings.max_timeout_s)
        )
        timeout_ms = parse_timeout_ms(body.timeout_ms, headers.get(TIMEOUT_HEADER), default_s, max_s)
        check_inputs(record.inputs, body.inputs, batched=record.batched)
        check_outputs((s.name for s in record.outputs), body)
        return record, body, timeout_ms

    async def _datatypes(self, record: ModelRecord, versioned: bool) -> dict[str, str] | None:
        """The input datatypes a request for ``record`` must have, known before its body is decoded; None when
        a traffic split may route it to another version (whose signature may differ)."""
        if versioned or await self._b.cache.split(record.name) is None:
            return {spec.name: spec.datatype for spec in record.inputs}
        return None

    async def _expect_continue(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: a declared body over the limit gets 413 (a full gateway 503) instead of
        ``100 Continue``, so the client never sends it; the connection is closed after the answer."""
        if request.version != HttpVersion11:
            return None
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers.get(hdrs.EXPECT)}")
        try:
            check_declared_body(request.content_length, self._b.settings.max_body_bytes)
            self.admission.check(request.content_length)
        except GatewayError as exc:
            log.info("request refused before 100 Continue", extra={"code": exc.code.value, "error": exc.message})
            self._b.metrics.refused(UNKNOWN_MODEL, exc.code.value)
            response = error_response(exc.http_status, exc.message, exc.code)
            response.headers.update(exc.headers)
            response.force_close()
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response's size
        return None

    async def _read_body(self, request: web.Request, ticket: Ticket) -> bytes:
        """The body, read within ``body_timeout_s`` (else 408) and ``max_body_bytes`` (else 413)."""
        settings = self._b.settings
        content = request.content
        if content.is_eof() and content.exception() is None:
            # The whole body came in with the head (the common case for small bodies): no wait, no timer.
            raw = content.read_nowait()
            if len(raw) > settings.max_body_bytes:
                raise PayloadTooLargeError("request body", None, settings.max_body_bytes)
            ticket.grow(len(raw))
            return raw
        chunks: list[bytes] = []
        received = 0
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                while chunk := await request.content.readany():
                    received += len(chunk)
                    if received > settings.max_body_bytes:
                        raise PayloadTooLargeError("request body", None, settings.max_body_bytes)
                    ticket.grow(received)  # counts a body without Content-Length as it arrives
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestTimeoutError(settings.body_timeout_s, received) from None
        except ConnectionError:
            raise ClientDisconnectedError(received) from None
        except HttpProcessingError as exc:
            raise InvalidRequestError(f"malformed body: {exc.message}") from None
        return b"".join(chunks)


def _spec(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
