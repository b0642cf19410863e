"""The gateway's lean HTTP/1.1 front: plain sync infer requests (and the OIP read-only routes clients call between
them) are parsed and answered here, everything else by aiohttp.

Every connection starts here. A request that is a plain sync infer call — ``POST /v2/models/{m}/infer`` or
``POST /v2/models/{m}/versions/{v}/infer`` over HTTP/1.1, an ASCII head within aiohttp's limits, a Content-Length
body of at most ``decode_inline_bytes``, no query, no transfer or content coding, no ``Expect``, ``Upgrade``,
``Prefer`` or ``Idempotency-Key``, tracing off — goes through the same checks as aiohttp's route (the guard's keys
and rate limits, ``Routes.sync_infer``, the error middleware's bodies and logs, ``X-Request-Id``) without
aiohttp's per-request objects, middleware chain and response machinery, which cost about a quarter of the
gateway's CPU per request at concurrency 64. So does a ``GET`` without a body of ``/v2``, ``/v2/health/live``,
``/v2/health/ready``, ``/v2/models/{m}[/versions/{v}]`` or ``.../ready`` (clients such as Triton's check readiness
and metadata on the connections they infer on). The first request that is anything else hands the connection,
with every byte not answered yet, to aiohttp for good, which answers it as it always has. Requests on one
connection are answered in order, one at a time (pipelined ones wait in the buffer).

As aiohttp does, a connection without a complete request head ``header_timeout_s`` after it opened or after its
previous response is closed. A request whose body has not fully arrived with its head goes to aiohttp with the
connection (which admits the declared bytes at once and reads the rest within ``body_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import json
import logging
import re
import time
from collections.abc import Callable
from typing import cast

from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from common import tracing
from schemas import ErrorCode, FleetError
from schemas.logs import request_context
from schemas.oip.body import CONTENT_JSON, dumps

from .auth import AuthError, Guard
from .errors import REQUEST_ID_HEADER, GatewayError, error_document, failure_status
from .job_routes import IDEMPOTENCY_HEADER, PREFER_HEADER
from .protocol import HEADER_LENGTH
from .routes import LIVE, Routes
from .settings import GatewaySettings

log = logging.getLogger("fleet.gateway")

_MODEL_TARGET = re.compile(rb"/v2/models/([^/?#%]+)(?:/versions/([^/?#%]+))?(/infer|/ready)?")
#: Read-only routes without a model, by request target.
_SERVER_ROUTES = {b"/v2": "server", b"/v2/health/live": "live", b"/v2/health/ready": "ready"}
#: ``Connection`` header values the front serves (any other, an upgrade say, goes to aiohttp).
_CONNECTION = frozenset({"keep-alive", "close"})
#: ``GET /v2/models/stats`` is the statistics route, not a model's metadata.
_NOT_MODELS = frozenset({b"stats"})
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Control characters (a bare CR or LF included) that no header line the front serves may hold.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Headers that send a request to aiohttp: codings, interim answers, upgrades and the async job API.
_ELSEWHERE = frozenset(
    {"transfer-encoding", "content-encoding", "expect", "upgrade", PREFER_HEADER.lower(), IDEMPOTENCY_HEADER.lower()}
)
#: Bytes buffered on one connection past which it stops reading until the request in hand is answered.
_MAX_BUFFERED = 1 << 20
_REQUEST_ID = REQUEST_ID_HEADER.lower()
#: Content type of the JSON bodies the front writes itself (aiohttp's ``json_response``'s).
_CONTENT_JSON = f"{CONTENT_JSON}; charset=utf-8"


class Head:
    """A parsed request head the front serves: its route (``infer``, ``server``, ``live``, ``ready``, ``model``,
    ``model_ready``), the model and version it names, its headers and body length."""

    __slots__ = ("body_bytes", "close", "headers", "model", "path", "route", "version")

    def __init__(
        self,
        route: str,
        path: str,
        model: str | None,
        version: str | None,
        headers: CIMultiDict[str],
        body_bytes: int,
    ) -> None:
        self.route = route
        self.path = path
        self.model = model
        self.version = version
        self.headers = headers
        self.body_bytes = body_bytes
        #: The client asked to close the connection after the answer (``Connection: close``).
        self.close = headers.get("connection", "").lower() == "close"


def parse_head(head: bytes, max_body_bytes: int, max_field_bytes: int, max_headers: int) -> Head | None:
    """The head (request line and headers, without the blank line) of a request the front serves, or None when
    aiohttp must (another route or method, anything unusual, anything malformed: aiohttp answers that as ever)."""
    if not head.isascii():
        return None
    lines = head.split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[2] != b"HTTP/1.1" or len(lines) > max_headers + 1:
        return None
    method, target = request_line[0], request_line[1]
    model = version = None
    route = _SERVER_ROUTES.get(target) if method == b"GET" else None
    if route is None:
        match = _MODEL_TARGET.fullmatch(target)
        if match is None:
            return None
        model, version, suffix = match.groups()
        if method == b"POST" and suffix == b"/infer":
            route = "infer"
        elif method == b"GET" and suffix is None and (version is not None or model not in _NOT_MODELS):
            route = "model"
        elif method == b"GET" and suffix == b"/ready":
            route = "model_ready"
        else:
            return None
    headers: CIMultiDict[str] = CIMultiDict()  # ``get``: the first of repeated headers, as aiohttp's request's
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or len(line) > max_field_bytes or _TOKEN.fullmatch(name) is None or _CONTROL.search(value):
            return None  # no colon, a folded line, a space before the colon, an oversized field, a bare CR or LF
        headers.add(name.decode(), value.strip(b" \t").decode())
    if len(headers.getall("content-length", ())) > 1:
        return None
    length = headers.get("content-length", "" if route == "infer" else "0")
    if not length.isdigit() or len(length) > 12 or int(length) > (max_body_bytes if route == "infer" else 0):
        return None  # an infer body must declare its length; nothing else the front serves has a body
    if any(name in headers for name in _ELSEWHERE):
        return None
    if headers.get("connection", "keep-alive").lower() not in _CONNECTION:
        return None
    return Head(
        route,
        target.decode(),
        model.decode() if model is not None else None,
        version.decode() if version is not None else None,
        headers,
        int(length),
    )


class _Date:
    """The ``Date`` header's value, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._value = second, email.utils.formatdate(second, usegmt=True)
        return self._value


class HttpFront:
    """One gateway's front: the protocol factory of its HTTP server (``protocol``) and its connections."""

    def __init__(
        self,
        settings: GatewaySettings,
        routes: Routes,
        guard: Guard,
        aiohttp_protocol: Callable[[], asyncio.Protocol],
        wire_ids: Callable[[], str],
    ) -> None:
        self._settings = settings
        self._routes = routes
        self._guard = guard
        self._aiohttp_protocol = aiohttp_protocol
        self._wire_ids = wire_ids
        self._date = _Date()
        self._connections: set[_Connection] = set()
        #: Requests being answered, on connections open or gone (the front owns them until they end).
        self._requests: set[asyncio.Task[None]] = set()
        self._closing = False
        # The largest head the front reads before leaving the connection to aiohttp (which applies its limits).
        self._max_head = settings.max_header_line_bytes + settings.max_headers * (settings.max_header_field_bytes + 2)

    def protocol(self) -> asyncio.Protocol:
        """A new connection's protocol (``loop.create_server``'s factory)."""
        return _Connection(self)

    async def close(self, grace_s: float) -> None:
        """Close idle connections now and the others once their request is answered (within ``grace_s``)."""
        self._closing = True
        for connection in list(self._connections):
            if connection.serving is None:
                connection.close()
        requests = list(self._requests)
        if requests:
            await asyncio.wait(requests, timeout=grace_s)
        for connection in list(self._connections):
            connection.close()
        for task in requests:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def answer(self, connection: _Connection, head: Head, body: bytes) -> asyncio.Task[None]:
        """Start answering ``connection``'s request (a task the front owns until it ends)."""
        task = asyncio.create_task(connection.answer(head, body), name="fleet-gateway-http-request")
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        return task

    async def serve(self, head: Head, body: bytes) -> tuple[int, list[tuple[str, str]], bytes, bool]:
        """Answer one request: status, headers, body and whether to close the connection after it."""
        wire_id = self._wire_ids()
        client_id = head.headers.get(_REQUEST_ID)
        headers: list[tuple[str, str]] = []
        close = False
        began = time.perf_counter()
        with request_context(request_id=wire_id):  # every line logged while handling it carries the id
            try:
                status, content_type, payload = await self._route(head, body, wire_id, headers)
            except FleetError as exc:
                if isinstance(exc, AuthError):
                    self._guard.refused(exc, head.model if head.route == "infer" else None, wire_id, head.path)
                    status = exc.http_status
                else:
                    status = failure_status(exc, wire_id, head.path)
                content_type, payload = _CONTENT_JSON, _json(error_document(exc.message, exc.code))
                if isinstance(exc, GatewayError):
                    headers.extend(exc.headers.items())
                    close = exc.close_connection
            except Exception:
                log.exception("unexpected error", extra={"request_id": wire_id, "path": head.path})
                status, content_type = 500, _CONTENT_JSON
                payload = _json(error_document("internal error", ErrorCode.INTERNAL))
            if log.isEnabledFor(logging.DEBUG):
                ms = round((time.perf_counter() - began) * 1000, 3)
                method = "POST" if head.route == "infer" else "GET"
                log.debug("%s %s %d", method, head.path, status, extra={"client_request_id": client_id, "ms": ms})
        headers.append(("Content-Type", content_type))
        headers.append((REQUEST_ID_HEADER, client_id or wire_id))
        return status, headers, payload, close or head.close or self._closing

    async def _route(
        self, head: Head, body: bytes, wire_id: str, headers: list[tuple[str, str]]
    ) -> tuple[int, str, bytes]:
        """The guard's checks and the route's answer: status, content type and body (``headers`` get the route's
        extra response headers)."""
        routes, model = self._routes, head.model
        await self._guard.check(head.headers, head.path, model, infer=head.route == "infer")
        if head.route == "infer":
            assert model is not None
            rendered = await routes.sync_infer(model, head.version, head.headers, body, wire_id)
            if rendered.header_length is not None:
                headers.append((HEADER_LENGTH, str(rendered.header_length)))
            return 200, rendered.content_type, rendered.body
        if head.route == "server":
            document, status = routes.server_answer()
        elif head.route == "live":
            document, status = LIVE
        elif head.route == "ready":
            document, status = await routes.ready_answer()
        else:
            assert model is not None
            answer = routes.model_answer if head.route == "model" else routes.model_ready_answer
            document, status = await answer(model, head.version)
        return status, _CONTENT_JSON, dumps(document)

    def render(self, status: int, headers: list[tuple[str, str]], payload: bytes, close: bool) -> bytes:
        """The response head of ``status`` with ``headers`` for a body of ``payload``."""
        lines = [f"HTTP/1.1 {status} {_PHRASES.get(status, '')}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        lines.append(f"Content-Length: {len(payload)}")
        lines.append(f"Date: {self._date.now()}")
        lines.append(f"Server: {SERVER_SOFTWARE}")
        if close:
            lines.append("Connection: close")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")


_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}


def _json(document: dict[str, str]) -> bytes:
    return json.dumps(document).encode()


class _Connection(asyncio.Protocol):
    """One client connection while the front serves it."""

    def __init__(self, front: HttpFront) -> None:
        self._front = front
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        #: The request being answered (one at a time, in order).
        self.serving: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._eof = False
        self._gone = False

    # asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        self._front._connections.add(self)
        self._arm(self._front._settings.header_timeout_s, self.close)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.serving is None:
            self._next()
        elif len(self._buffer) > _MAX_BUFFERED and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        return self.serving is not None  # keep the transport open to write the answer in hand

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self._disarm()
        self._front._connections.discard(self)

    # requests ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (an idle timeout, the gateway stopping)."""
        self._disarm()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _next(self) -> None:
        """Serve the next buffered request, wait for more bytes, or hand the connection to aiohttp."""
        front = self._front
        settings = front._settings
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > front._max_head:
                self._hand_over()
            elif self._eof:
                self.close()
            return
        head = parse_head(
            bytes(self._buffer[:end]),
            min(settings.decode_inline_bytes, settings.max_body_bytes),
            settings.max_header_field_bytes,
            settings.max_headers,
        )
        if head is None or tracing.enabled():
            self._hand_over()
            return
        start = end + 4
        if len(self._buffer) - start < head.body_bytes:
            # aiohttp admits the declared bytes, reads the rest within the body timeout and counts a client gone
            # meanwhile; a small body nearly always comes with its head.
            self._hand_over()
            return
        self._disarm()
        body = bytes(self._buffer[start : start + head.body_bytes])
        del self._buffer[: start + head.body_bytes]
        self.serving = front.answer(self, head, body)

    async def answer(self, head: Head, body: bytes) -> None:
        """Answer one request and go on with the next one buffered."""
        front = self._front
        try:
            status, headers, payload, close = await front.serve(head, body)
        finally:
            self.serving = None
        transport = self._transport
        if self._gone or transport is None or transport.is_closing():
            return
        transport.writelines((front.render(status, headers, payload, close), payload))
        if close or self._eof and not self._buffer:
            self.close()
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self._arm(front._settings.header_timeout_s, self.close)
        if self._buffer:
            self._next()

    def _hand_over(self) -> None:
        """Give the connection, with the bytes not answered yet, to aiohttp for good."""
        self._disarm()
        transport = self._transport
        self._front._connections.discard(self)
        if transport is None or transport.is_closing():
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        protocol = self._front._aiohttp_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            protocol.data_received(data)
        if self._eof and isinstance(protocol, asyncio.Protocol):
            protocol.eof_received()

    # timers ------------------------------------------------------------------------------------
    def _arm(self, delay_s: float, action: Callable[[], None]) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(delay_s, action)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
