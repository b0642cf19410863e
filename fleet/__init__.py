"""The ``fleet`` command line, the Python client and the local launcher of inference-fleet.

The public names load lazily, so ``import fleet.modelgen`` (tests, benchmarks) does not pull in
aiohttp and the launcher.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import FleetClient, InferResult, infer_sync
    from .errors import ClientError, FleetHTTPError, StackError
    from .jobs import Job
    from .producer import FleetProducer, ProducerResult
    from .stack import LocalStack, StackConfig

__all__ = [
    "ClientError",
    "FleetClient",
    "FleetHTTPError",
    "FleetProducer",
    "InferResult",
    "Job",
    "LocalStack",
    "ProducerResult",
    "StackConfig",
    "StackError",
    "infer_sync",
]

_HOMES = {
    "ClientError": "errors",
    "FleetClient": "client",
    "FleetHTTPError": "errors",
    "FleetProducer": "producer",
    "InferResult": "client",
    "Job": "jobs",
    "LocalStack": "stack",
    "ProducerResult": "producer",
    "StackConfig": "stack",
    "StackError": "errors",
    "infer_sync": "client",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'fleet' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
