"""The ``fleet`` command line, the Python client and the local launcher of inference-fleet.

The public names load lazily, so ``import fleet.demo.modelgen`` (tests, benchmarks) does not pull in
aiohttp and the launcher. The subpackages: :mod:`fleet.client` (the SDK), :mod:`fleet.models` (registering
models), :mod:`fleet.pipeline` (batch runs), :mod:`fleet.local` (the local stack), :mod:`fleet.demo` and
:mod:`fleet.cli` (the command).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client.errors import ClientError, FleetHTTPError, StackError
    from .client.http import FleetClient, InferResult, infer_sync
    from .client.jobs import Job
    from .client.producer import FleetProducer, ProducerResult
    from .local.stack import LocalStack, StackConfig

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
    "ClientError": "client.errors",
    "FleetClient": "client.http",
    "FleetHTTPError": "client.errors",
    "FleetProducer": "client.producer",
    "InferResult": "client.http",
    "Job": "client.jobs",
    "LocalStack": "local.stack",
    "ProducerResult": "client.producer",
    "StackConfig": "local.stack",
    "StackError": "client.errors",
    "infer_sync": "client.http",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'fleet' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
