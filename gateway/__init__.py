"""The inference-fleet gateway: Open Inference Protocol v2 over HTTP, requests to Kafka, replies from Redis."""

from .app import Gateway
from .errors import (
    BackendDownError,
    DeadlineExceededError,
    GatewayError,
    InvalidInputError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    VersionNotFoundError,
    WorkerReplyError,
)
from .settings import GatewaySettings

__all__ = [
    "BackendDownError",
    "DeadlineExceededError",
    "Gateway",
    "GatewayError",
    "GatewaySettings",
    "InvalidInputError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "VersionNotFoundError",
    "WorkerReplyError",
]
