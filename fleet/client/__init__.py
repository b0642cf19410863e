"""The Python SDK: the gateway's HTTP client, the direct Kafka producer, job views, the OIP v2 wire codec, errors.

``from fleet.client import FleetClient`` keeps working: the HTTP client's public names live in
:mod:`.http` and are re-exported here. The producer (:mod:`.producer`) loads only when imported.
"""

from __future__ import annotations

from .errors import ClientError, FleetHTTPError, JobFailedError, StackError
from .http import (
    API_KEY_ENV,
    IDEMPOTENCY_HEADER,
    TIMEOUT_HEADER,
    FleetClient,
    InferResult,
    cancel_sync,
    infer_sync,
    job_sync,
    submit_sync,
    wait_sync,
)
from .jobs import Job

__all__ = [
    "API_KEY_ENV",
    "IDEMPOTENCY_HEADER",
    "TIMEOUT_HEADER",
    "ClientError",
    "FleetClient",
    "FleetHTTPError",
    "InferResult",
    "Job",
    "JobFailedError",
    "StackError",
    "cancel_sync",
    "infer_sync",
    "job_sync",
    "submit_sync",
    "wait_sync",
]
