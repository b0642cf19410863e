"""``fleet.producer`` is :mod:`fleet.client.producer`; this name is kept for code that imports it."""

from __future__ import annotations

from fleet.client.producer import (
    Array,
    FleetProducer,
    PendingTable,
    ProducerResult,
    RequestFailedError,
    RequestSender,
    Route,
    RoutingCache,
)

__all__ = [
    "Array",
    "FleetProducer",
    "PendingTable",
    "ProducerResult",
    "RequestFailedError",
    "RequestSender",
    "Route",
    "RoutingCache",
]
