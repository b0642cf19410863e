"""Errors of the worker.

Hierarchy::

    schemas.FleetError                  (code, http_status, retriable)
     └── WorkerError                    the worker cannot start or a routine crashed (INTERNAL)
          ├── ModelLoadError            MODEL_LOAD_FAILED  artifact missing, corrupt or unloadable
          ├── ModelExecutionError       MODEL_ERROR        the model raised or returned a wrong shape
          └── BackendDownError          BACKEND_UNAVAILABLE  Kafka or Redis unreachable (retriable)

Model errors become error replies for the requests concerned; backend errors stop the worker from
committing (the records are retried, or redelivered to another worker).
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import ErrorCode, FleetError


class WorkerError(FleetError):
    """Base of the worker's own errors."""


class ModelLoadError(WorkerError):
    """A model version that cannot be loaded."""

    code = ErrorCode.MODEL_LOAD_FAILED

    def __init__(self, model: str, version: str, problem: str) -> None:
        super().__init__(f"cannot load model {model!r} version {version!r}: {problem}")


class ModelExecutionError(WorkerError):
    """A model that raised, or returned outputs that do not fit its signature."""

    code = ErrorCode.MODEL_ERROR


class BackendDownError(WorkerError):
    """Redis or Kafka could not be reached; nothing was committed."""

    code = ErrorCode.BACKEND_UNAVAILABLE
    retriable = True


async def start_kafka_client(client: AIOKafkaProducer | AIOKafkaConsumer, bootstrap: str) -> None:
    """Start an aiokafka producer or consumer; when Kafka refuses, close it and raise BackendDownError."""
    try:
        await client.start()
    except KafkaError as exc:
        await client.stop()
        raise BackendDownError(f"Kafka unavailable at {bootstrap}: {exc}") from exc
