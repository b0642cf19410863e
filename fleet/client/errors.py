"""Errors of the fleet tools: the gateway client's (HTTP or gRPC) and the local stack's.

Hierarchy::

    schemas.FleetError
     ├── ClientError              the gateway could not be asked (unreachable, timed out)
     │    └── FleetHTTPError      the gateway answered with a non-2xx status (over gRPC: an error status,
     │                            ``status`` the HTTP status of its code, ``grpc_status`` its name)
     ├── JobFailedError           an async job ended without outputs (failed, cancelled, expired)
     └── StackError               the local stack could not start, or a child died
"""

from __future__ import annotations

from schemas import ErrorCode, FleetError

_CODES_BY_STATUS = {
    400: ErrorCode.INVALID_REQUEST,
    404: ErrorCode.MODEL_NOT_FOUND,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    503: ErrorCode.BACKEND_UNAVAILABLE,
    504: ErrorCode.DEADLINE_EXCEEDED,
}


class ClientError(FleetError):
    """The gateway could not be reached or did not answer in time."""

    code = ErrorCode.BACKEND_UNAVAILABLE
    retriable = True


class FleetHTTPError(ClientError):
    """A non-2xx answer; ``message`` is the gateway's ``{"error": ...}`` text."""

    def __init__(
        self, status: int, message: str, *, code: ErrorCode | None = None, grpc_status: str | None = None
    ) -> None:
        super().__init__(f"HTTP {status}: {message}", code=code or _CODES_BY_STATUS.get(status, ErrorCode.INTERNAL))
        self.status = status
        self.message = message
        self.retriable = status in (429, 502, 503, 504)
        #: Over gRPC: the call's status code name (e.g. ``NOT_FOUND``); ``status`` is the HTTP status of ``code``.
        self.grpc_status = grpc_status


class JobFailedError(FleetError):
    """An async job finished without outputs: ``status`` is failed, cancelled or expired; ``code`` says why."""

    def __init__(self, job_id: str, status: str, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(f"job {job_id} {status}: {message}", code=code or ErrorCode.INTERNAL)
        self.job_id = job_id
        self.status = status


class StackError(FleetError):
    """A local stack process failed to start, to become ready, or died."""

    code = ErrorCode.INTERNAL
