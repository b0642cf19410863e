"""Errors of the gateway and the single middleware that turns every error into an HTTP answer.

Hierarchy::

    schemas.FleetError                 (code, http_status, retriable)
     └── GatewayError
          ├── InvalidRequestError      400  malformed body, headers or parameters
          ├── InvalidInputError        400  a tensor that does not fit the model's signature
          ├── ModelNotFoundError       404
          ├── VersionNotFoundError     404
          ├── PayloadTooLargeError     413  request over max_body_bytes, as sent or as queued
          ├── DeadlineExceededError    504  no reply before the request's deadline
          ├── BackendDownError         503  Kafka or Redis unreachable (or the gateway is stopping)
          ├── OverloadedError          503  too many requests or body bytes in flight (Retry-After)
          ├── RequestTimeoutError      408  the body did not arrive within body_timeout_s (connection closed)
          ├── ClientDisconnectedError  499  the client went away while its body was read (logged at INFO)
          ├── JobNotFoundError         404  unknown async job (or its TTL passed)
          ├── ConflictError            409  cancel of a job that is not pending; reused Idempotency-Key
          └── WorkerReplyError         HTTP_STATUS[code] of a worker's error reply

Errors raised by ``schemas`` (``SchemaError``, ``RegistryError``, ...) are FleetErrors too and map
the same way. Anything else becomes a 500 with a fixed message; the traceback only goes to the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from aiohttp import web
from redis.exceptions import RedisError

from schemas import HTTP_STATUS, BackendUnavailableError, ErrorCode, FleetError
from schemas.settings import RedisPoolExhaustedError

log = logging.getLogger("fleet.gateway")

#: Header carrying the request id back to the client.
REQUEST_ID_HEADER = "X-Request-Id"
#: The internal (wire) request id, stored on each aiohttp request by the app's request middleware.
WIRE_ID_KEY = web.RequestKey("fleet_wire_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GatewayError(FleetError):
    """Base of the gateway's own errors: extra response headers, and whether the connection is closed after it."""

    headers: Mapping[str, str] = MappingProxyType({})
    close_connection: bool = False


class InvalidRequestError(GatewayError):
    """A body, header or parameter the gateway cannot understand."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, problem: str) -> None:
        super().__init__(f"invalid request: {problem}")


class InvalidInputError(GatewayError):
    """A tensor whose data does not agree with its own declaration or the model's signature."""

    code = ErrorCode.INVALID_INPUT

    def __init__(self, tensor: str, problem: str) -> None:
        super().__init__(f"input {tensor!r}: {problem}")


class ModelNotFoundError(GatewayError):
    """The model is not registered."""

    code = ErrorCode.MODEL_NOT_FOUND

    def __init__(self, model: str) -> None:
        super().__init__(f"unknown model {model!r}")


class VersionNotFoundError(GatewayError):
    """The model exists but not this version."""

    code = ErrorCode.VERSION_NOT_FOUND

    def __init__(self, model: str, version: str) -> None:
        super().__init__(f"model {model!r} has no version {version!r}")


class PayloadTooLargeError(GatewayError):
    """A request over the gateway's one size limit (``setting``), as sent or as queued."""

    code = ErrorCode.PAYLOAD_TOO_LARGE

    def __init__(self, what: str, size: int | None, limit: int, setting: str = "FLEET_GATEWAY_MAX_BODY_BYTES") -> None:
        size_text = "" if size is None else f" of {size} bytes"
        super().__init__(f"{what}{size_text} exceeds the limit of {limit} bytes ({setting})")


class DeadlineExceededError(GatewayError):
    """No reply arrived before the request's deadline."""

    code = ErrorCode.DEADLINE_EXCEEDED
    retriable = True

    def __init__(self, model: str, timeout_ms: float) -> None:
        super().__init__(f"no reply from model {model!r} within {timeout_ms:g} ms")


class BackendDownError(GatewayError):
    """Kafka or Redis could not be used in time (or the gateway is shutting down)."""

    code = ErrorCode.BACKEND_UNAVAILABLE
    retriable = True

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend} unavailable: {reason}")
        self.backend = backend


class OverloadedError(GatewayError):
    """The gateway holds as many requests (or body bytes) in flight as it may: shed early, retry shortly."""

    code = ErrorCode.OVERLOADED
    retriable = True

    def __init__(self, what: str, retry_after_s: int = 1) -> None:
        super().__init__(f"gateway overloaded: {what}; retry in {retry_after_s} s")
        self.headers = {"Retry-After": str(retry_after_s)}


class RequestTimeoutError(GatewayError):
    """The request body did not arrive in time; the connection is closed after the answer."""

    code = ErrorCode.REQUEST_TIMEOUT
    close_connection = True

    def __init__(self, timeout_s: float, received: int) -> None:
        super().__init__(f"request body not received within {timeout_s:g} s ({received} bytes arrived)")


class ClientDisconnectedError(GatewayError):
    """The client closed the connection before its request was read: nobody is left to answer."""

    code = ErrorCode.CLIENT_DISCONNECTED
    close_connection = True

    def __init__(self, received: int) -> None:
        super().__init__(f"client disconnected while sending the body ({received} bytes arrived)")


T = TypeVar("T")


async def redis_bounded(call: Awaitable[T], timeout_s: float, what: str) -> T:
    """``await call`` (Redis work) within ``timeout_s``; a timeout, an unreachable Redis, or the schemas
    stores' BackendUnavailableError becomes ``BackendDownError("redis", ...)``: 503, never a hang. A wait
    for a pooled connection past ``FLEET_REDIS_POOL_TIMEOUT_S`` is ``OverloadedError`` (503, Retry-After)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except TimeoutError:
        raise BackendDownError("redis", f"{what} took over {timeout_s:g} s") from None
    except RedisPoolExhaustedError as exc:  # this process is busy, Redis may be fine
        raise OverloadedError(f"{what}: {exc}") from None
    except (RedisError, OSError) as exc:
        raise BackendDownError("redis", f"{what} failed: {exc or type(exc).__name__}") from None
    except BackendUnavailableError as exc:
        reason = exc.message.removeprefix("Redis unavailable: ")
        raise BackendDownError("redis", f"{what} failed: {reason}") from None


class JobNotFoundError(GatewayError):
    """No async job with this id (never submitted, or its TTL has passed)."""

    code = ErrorCode.JOB_NOT_FOUND

    def __init__(self, job_id: str) -> None:
        super().__init__(f"unknown job {job_id!r} (never submitted, or its TTL has passed)")


class ConflictError(GatewayError):
    """The request conflicts with the job's state (or with the job an Idempotency-Key already names)."""

    code = ErrorCode.CONFLICT


class WorkerReplyError(GatewayError):
    """A worker answered the request with an error."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message, code=code)


def error_document(message: str, code: ErrorCode | None = None) -> dict[str, str]:
    """The JSON error body every failure uses: ``{"error": message, "code": CODE}`` (OIP v2 plus our code)."""
    body = {"error": message}
    if code is not None:
        body["code"] = code.value
    return body


def error_response(status: int, message: str, code: ErrorCode | None = None) -> web.Response:
    """``error_document`` as an aiohttp response with ``status``."""
    return web.json_response(error_document(message, code), status=status)


def failure_status(exc: FleetError, request_id: str, path: str) -> int:
    """The HTTP status of a failed request's error, logged the way every failure is (a warning from 500 up)."""
    status = HTTP_STATUS.get(exc.code, 500)
    level = logging.WARNING if status >= 500 else logging.INFO
    extra = {"request_id": request_id, "path": path, "code": exc.code.value, "status": status, "error": exc.message}
    log.log(level, "request failed", extra=extra)
    return status


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every FleetError to ``{"error": message}`` + ``HTTP_STATUS[code]``; hide anything else."""
    try:
        return await handler(request)
    except FleetError as exc:
        status = failure_status(exc, request.get(WIRE_ID_KEY, ""), request.path)
        response = error_response(status, exc.message, exc.code)
        if isinstance(exc, GatewayError):
            response.headers.update(exc.headers)
            if exc.close_connection:
                response.force_close()
        return response
    except web.HTTPException as exc:
        # aiohttp's own answers (no route, wrong method, body over client_max_size) keep their status
        # but get the same JSON error body.
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower())
    except Exception:
        log.exception("unexpected error", extra=_extra(request))
        return error_response(500, "internal error", ErrorCode.INTERNAL)


def _extra(request: web.Request, **fields: object) -> dict[str, object]:
    return {"request_id": request.get(WIRE_ID_KEY, ""), "path": request.path, **fields}
