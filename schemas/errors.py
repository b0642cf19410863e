"""Error codes shared by every service, and the base exception that carries them.

Hierarchy::

    FleetError                    (code, http_status, retriable)
     └── SchemaError              a payload that does not follow the contract

Each service subclasses ``FleetError`` in its own ``errors.py``; the stable ``code`` string is what
travels in error replies and dead-letter records, ``http_status`` is what the gateway answers.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable error identifiers used on the wire (error replies, dead letters) and in HTTP bodies."""

    INVALID_REQUEST = "INVALID_REQUEST"  # malformed body, bad JSON, wrong header values
    INVALID_INPUT = "INVALID_INPUT"  # tensor name/shape/datatype does not match the signature
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # no answer within the request's timeout / deadline
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"  # Kafka or Redis unreachable
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"  # nothing can serve the model: pinned to 0, no worker and no autoscaler
    MODEL_ERROR = "MODEL_ERROR"  # the model raised while running a batch
    UNSUPPORTED_ENVELOPE = "UNSUPPORTED_ENVELOPE"  # envelope version newer than this reader
    UNDECODABLE = "UNDECODABLE"  # bytes that are not a valid envelope
    JOB_NOT_FOUND = "JOB_NOT_FOUND"  # unknown async job id, or its TTL has passed
    CONFLICT = "CONFLICT"  # the job is not in a state that allows this (cancel a running job, reused key)
    CANCELLED = "CANCELLED"  # the job was cancelled before a worker ran it
    UNAUTHENTICATED = "UNAUTHENTICATED"  # no API key, or an unknown or revoked one
    FORBIDDEN = "FORBIDDEN"  # the API key may not use this model
    RATE_LIMITED = "RATE_LIMITED"  # the key's or the model's token bucket is empty (see Retry-After)
    OVERLOADED = "OVERLOADED"  # the gateway holds its most requests or body bytes in flight (see Retry-After)
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"  # the request body did not arrive in time
    CLIENT_DISCONNECTED = "CLIENT_DISCONNECTED"  # the client closed the connection before its request was read
    INTERNAL = "INTERNAL"


#: HTTP status the gateway answers for each code.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.VERSION_NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.BACKEND_UNAVAILABLE: 503,
    ErrorCode.MODEL_LOAD_FAILED: 503,
    ErrorCode.MODEL_UNAVAILABLE: 503,
    ErrorCode.MODEL_ERROR: 500,
    ErrorCode.UNSUPPORTED_ENVELOPE: 400,
    ErrorCode.UNDECODABLE: 400,
    ErrorCode.JOB_NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.CANCELLED: 409,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.CLIENT_DISCONNECTED: 499,  # nginx's "client closed request": never seen by the client
    ErrorCode.INTERNAL: 500,
}


class FleetError(Exception):
    """Base of every domain error: a stable code, an HTTP status and whether a retry may help."""

    code: ErrorCode = ErrorCode.INTERNAL
    retriable: bool = False

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def http_status(self) -> int:
        """HTTP status for this error's code."""
        return HTTP_STATUS[self.code]


class SchemaError(FleetError):
    """A payload that cannot be decoded or does not follow the contract."""

    code = ErrorCode.UNDECODABLE


class UnsupportedEnvelopeError(SchemaError):
    """An envelope whose version is newer than this reader understands."""

    code = ErrorCode.UNSUPPORTED_ENVELOPE
