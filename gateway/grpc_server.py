"""The gateway's gRPC server: grpcio's asyncio server on its own port, serving ``inference.GRPCInferenceService``
(``gateway.grpc_service``) and ``grpc.health.v1.Health``.

Health answers from the gateway's readiness at the time of the call: SERVING for the server (``""``) and the
inference service when Kafka and Redis are reachable and replies flow, NOT_SERVING otherwise (and once the
gateway is stopping); NOT_FOUND for another service name. ``Watch`` re-checks every second and sends changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from schemas.oip_grpc import SERVICE

log = logging.getLogger("fleet.gateway")

_WATCH_INTERVAL_S = 1.0
_Status = health_pb2.HealthCheckResponse.ServingStatus


class ReadinessHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # grpcio-health-checking: untyped
    """``grpc.health.v1.Health`` answered from ``problems()`` (the gateway's readiness)."""

    def __init__(self, problems: Callable[[], Awaitable[list[str]]]) -> None:
        self._problems = problems

    async def _status(self, service: str) -> Any:
        if service not in ("", SERVICE):
            return None
        problems = await self._problems()
        return health_pb2.HealthCheckResponse.NOT_SERVING if problems else health_pb2.HealthCheckResponse.SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        """The status now."""
        status = await self._status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now and each change after it (SERVICE_UNKNOWN for an unknown name), until cancelled."""
        last = None
        while True:
            status = await self._status(request.service)
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN if status is None else status
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(_WATCH_INTERVAL_S)


class GrpcServer:
    """Binds, starts and stops the grpc.aio server of one gateway."""

    def __init__(
        self, handlers: list[grpc.GenericRpcHandler[Any, Any]], health: ReadinessHealth, max_message_bytes: int
    ) -> None:
        self._server = grpc.aio.server(
            options=[
                # A bigger request is refused with RESOURCE_EXHAUSTED before it is read into memory.
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", -1),
                # Two gateways on one port would share its connections silently; refuse the second bind.
                ("grpc.so_reuseport", 0),
            ]
        )
        self._server.add_generic_rpc_handlers(tuple(handlers))
        health_pb2_grpc.add_HealthServicer_to_server(health, self._server)
        self._started = False

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port) and serve; returns the bound port."""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = self._server.add_insecure_port(address)
        if bound == 0:  # older grpcio reports a failed bind this way instead of raising
            raise OSError(f"cannot listen for gRPC on {address}")
        await self._server.start()
        self._started = True
        return bound

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let running ones finish within ``grace_s``, then cancel them; idempotent."""
        if self._started:
            self._started = False
            await self._server.stop(grace_s)
