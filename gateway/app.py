"""The gateway process: an aiohttp server speaking OIP v2 in front of Kafka (requests) and Redis (replies).

Lifecycle: ``start()`` binds the HTTP server and starts the backends in the background (so liveness
answers even while Kafka or Redis are down); ``stop()`` stops accepting connections, lets in-flight
requests finish within ``shutdown_grace_s``, then closes the reply listener, the producer and Redis.
The backends are tied to the aiohttp app's lifetime through ``cleanup_ctx``; so is the webhook
dispatcher of async jobs (``gateway.webhooks``) when ``webhooks`` is on, and the retry relay
(``gateway.retry_relay``) when ``retry_relay`` is on.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.metadata
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator

from aiohttp import web

from common.wake import WakeNotes
from schemas import ModelRegistry, Names
from schemas.eventloop import AsyncService
from schemas.key_migrator import warn_if_old_layout
from schemas.logs import request_context

from .auth import Guard
from .backends import Backends
from .batch_runner import BatchRunner
from .batch_state import BatchStore
from .errors import REQUEST_ID_HEADER, WIRE_ID_KEY, Handler, error_middleware
from .files import FileStore
from .generation_path import GenerationPath
from .grpc_server import GrpcServer, ReadinessHealth
from .grpc_service import GrpcInferenceService
from .http_front import HttpFront
from .limits import Decoder
from .metrics import GatewayMetrics
from .model_config import ModelConfigRoutes, ModelDescriptions
from .openai_batches import BatchRoutes
from .openai_routes import GenerationRoutes
from .openapi import add_route as add_openapi_route
from .pipeline_routes import PipelineRoutes
from .publisher import RequestPublisher
from .registry_cache import RegistryCache
from .replies import ReplyListener
from .retry_relay import RetryRelay
from .routes import SERVER_NAME, Routes
from .settings import GatewaySettings
from .webhooks import WebhookDispatcher

log = logging.getLogger("fleet.gateway")

_READY_POLL_S = 0.02
_GRPC_STOP_GRACE_S = 1.0
#: Connections waiting to be accepted (aiohttp's TCPSite's default).
_BACKLOG = 128


class _State(enum.Enum):
    NEW = "new"
    STARTED = "started"
    STOPPED = "stopped"


def _package_version() -> str:
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class Gateway(AsyncService):
    """One gateway: ``async with Gateway(settings) as gw: ... gw.url``. Single use."""

    def __init__(self, settings: GatewaySettings, *, names: Names | None = None) -> None:
        self.settings = settings
        self.names = names or Names(settings.fleet.namespace)
        self.metrics = GatewayMetrics()
        self._state = _State.NEW
        self._runner: web.AppRunner | None = None
        self._routes: Routes | None = None
        self._backends: Backends | None = None
        self._port = settings.port
        self._grpc: GrpcServer | None = None
        self._grpc_port: int | None = None
        # Wire ids: a random per-process prefix plus a counter, unique across gateways and restarts
        # (a reused id would hit a previous request's first-result marker) and cheap to make.
        self._id_prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)
        self._batches: BatchRunner | None = None
        self._front: HttpFront | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server (with the real port when ``port`` was 0)."""
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def grpc_target(self) -> str | None:
        """``host:port`` of the running gRPC server; None when it is off (``grpc_port`` 0)."""
        if self._grpc_port is None:
            return None
        return self.url.removeprefix("http://").rpartition(":")[0] + f":{self._grpc_port}"

    async def start(self) -> None:
        """Bind the HTTP server and start connecting to Kafka and Redis."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"a gateway cannot be started when {self._state.value}")
        self._state = _State.STARTED
        self._backends = self._make_backends()
        guard = Guard(self.settings, self.names, self._backends.redis, self.metrics)
        app = web.Application(
            client_max_size=self.settings.max_body_bytes,
            middlewares=[self._request_middleware, error_middleware, guard.middleware],
        )
        self._routes = Routes(self._backends, self._new_wire_id)
        self._routes.add_infer_to(app)  # first: aiohttp tries a prefix's routes in order, and most requests infer
        path = self._routes.path  # the gRPC service and the OpenAI routes serve through the same path
        descriptions = ModelDescriptions(path, self._backends.redis, self.names, self.settings.backend_timeout_s)
        ModelConfigRoutes(descriptions).add_to(app)  # before the model routes: /v2/models/stats names no model
        generation = GenerationPath(self._backends, self._routes, self._new_wire_id)
        GenerationRoutes(generation, path, guard).add_to(app)
        files = FileStore(self.settings.files_dir)
        if self.settings.batches:
            self._batches = BatchRunner(self._backends, generation, files, guard)
        store = BatchStore(self._backends.redis, self.names)
        BatchRoutes(files, store, self._batches, self.settings.files_max_bytes).add_to(app)
        self._routes.add_to(app)
        PipelineRoutes(self._backends, self._routes).add_to(app)
        add_openapi_route(app, self._backends.version)
        app.cleanup_ctx.append(self._backends_ctx)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.settings.shutdown_grace_s,
            # aiohttp's request-parser limits: longer lines/values or more headers get 400.
            max_line_size=self.settings.max_header_line_bytes,
            max_field_size=self.settings.max_header_field_bytes,
            max_headers=self.settings.max_headers,
            # aiohttp closes a connection that has not completed a request head this long after it opened
            # or after its previous response (slowloris); no request runs on it, so nobody is answered.
            keepalive_timeout=self.settings.header_timeout_s,
        )
        self._runner = runner
        try:
            await runner.setup()
            if self.settings.http_front:
                await self._start_front(runner, guard)
            else:
                site = web.TCPSite(runner, self.settings.host, self.settings.port)
                await site.start()
                addresses = runner.addresses
                if addresses:
                    self._port = int(addresses[0][1])
            if self.settings.grpc_port:
                version = self._backends.version
                await self._start_grpc(GrpcInferenceService(path, descriptions, guard, self.metrics, version))
        except BaseException:
            await self.stop()
            raise
        log.info(
            "gateway started",
            extra={
                "url": self.url,
                "grpc": self.grpc_target,
                "gateway_id": self.settings.gateway_id,
                "namespace": self.names.namespace,
            },
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until ``/v2/health/ready`` would answer 200 (Kafka and Redis reachable, replies flowing).

        TimeoutError (with what is still missing) after ``timeout`` seconds; the gateway answers HTTP
        while it waits, with 503 for what needs a backend that is not there yet.
        """
        if self._routes is None or self._state is not _State.STARTED:
            raise RuntimeError("wait_ready() needs a started gateway")
        deadline = time.monotonic() + timeout
        while problems := await self._routes.path.readiness_problems():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"gateway not ready after {timeout:g} s: " + "; ".join(problems))
            await asyncio.sleep(_READY_POLL_S)

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests (up to the grace period), close the backends."""
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        if self._routes is not None:
            self._routes.draining = True
        if self._backends is not None:
            await self._drain_waiting(self._backends.listener)
        if self._grpc is not None:
            await self._grpc.stop(_GRPC_STOP_GRACE_S)  # the calls still running were just answered
        await self._stop_front()
        runner, self._runner = self._runner, None
        if runner is not None:
            # Stops the sites, waits for running handlers up to shutdown_timeout, then runs the
            # cleanup_ctx teardown (listener, producer, Redis) after the last handler is done.
            await runner.cleanup()
        log.info("gateway stopped", extra={"gateway_id": self.settings.gateway_id})

    async def _drain_waiting(self, listener: ReplyListener) -> None:
        """Give waiting requests the grace period to get their replies, then answer the rest with 503.

        Without this, aiohttp would cancel their handlers at the end of the grace period and cut the
        connections: a client would get no answer at all instead of a retryable 503.
        """
        await listener.wait_idle(self.settings.shutdown_grace_s)
        failed = listener.fail_waiting("the gateway stopped before the reply arrived; retry the request")
        if failed:
            log.warning("answered requests still waiting with 503", extra={"requests": failed})

    async def _start_front(self, runner: web.AppRunner, guard: Guard) -> None:
        """Listen with the lean HTTP front, which hands aiohttp (``runner``'s server) what it does not serve."""
        assert self._routes is not None and runner.server is not None
        self._front = HttpFront(self.settings, self._routes, guard, runner.server, self._new_wire_id)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._front.protocol, self.settings.host, self.settings.port, backlog=_BACKLOG
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def _stop_front(self) -> None:
        """Stop listening, then close the front's connections once their requests are answered."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._front is not None:
            await self._front.close(self.settings.shutdown_grace_s)

    async def _start_grpc(self, service: GrpcInferenceService) -> None:
        assert self._routes is not None
        settings = self.settings
        health = ReadinessHealth(self._routes.path.readiness_problems)
        self._grpc = GrpcServer([service.handler()], health, settings.max_body_bytes)
        # An HTTP port of 0 (tests, embedders) means free ports for both servers.
        self._grpc_port = await self._grpc.start(settings.host, 0 if settings.port == 0 else settings.grpc_port)

    def _new_wire_id(self) -> str:
        return f"{self._id_prefix}-{next(self._counter)}"

    def _make_backends(self) -> Backends:
        settings = self.settings
        redis = settings.fleet.redis.client()  # connects lazily
        wake = WakeNotes(redis, self.names, settings.wake_interval_s)
        return Backends(
            settings=settings,
            names=self.names,
            redis=redis,
            cache=RegistryCache(
                ModelRegistry(redis, self.names), settings.registry_cache_ttl_s, settings.backend_timeout_s
            ),
            publisher=RequestPublisher(
                settings.fleet.kafka,
                settings.backend_timeout_s,
                settings.max_body_bytes,
                names=self.names,
                on_landed=wake.note if wake.enabled else None,
            ),
            listener=ReplyListener(settings.fleet.redis, self.names.reply_stream(settings.gateway_id)),
            metrics=self.metrics,
            version=_package_version(),
            decoder=Decoder(settings.decode_inline_bytes, settings.decode_processes, settings.max_tensor_elements),
            wake=wake,
        )

    async def _backends_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Start the backends with the app and close them after the last request handler finished."""
        backends = self._backends
        assert backends is not None
        webhooks = None
        if self.settings.webhooks:
            webhooks = WebhookDispatcher(self.settings, self.names, backends.redis, self.settings.gateway_id)
        relay = None
        if self.settings.retry_relay:
            relay = RetryRelay(self.settings.fleet, self.names, backends.redis, self.settings.gateway_id)
        try:
            await warn_if_old_layout(backends.redis, self.names, log)
            await backends.listener.start()
            await backends.publisher.start()
            backends.wake.start()
            if webhooks is not None:
                await webhooks.start()
            if relay is not None:
                await relay.start()
            if self._batches is not None:
                await self._batches.start()
            yield
        finally:
            await backends.decoder.stop()  # no request handler is left to use it
            if self._batches is not None:
                await self._batches.stop()
            if relay is not None:
                await relay.stop()
            if webhooks is not None:
                await webhooks.stop()
            await backends.listener.stop()
            await backends.publisher.stop()
            await backends.wake.stop()
            await backends.cache.close()
            await backends.redis.aclose()

    @web.middleware
    async def _request_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        wire_id = self._new_wire_id()
        request[WIRE_ID_KEY] = wire_id
        client_id = request.headers.get(REQUEST_ID_HEADER)
        began = time.perf_counter()
        with request_context(request_id=wire_id):  # every line logged while handling it carries the id
            response = await handler(request)
            if log.isEnabledFor(logging.DEBUG) and request.path != "/metrics":
                log.debug(
                    "%s %s %d",
                    request.method,
                    request.path,
                    response.status,
                    extra={"client_request_id": client_id, "ms": round((time.perf_counter() - began) * 1000, 3)},
                )
        response.headers[REQUEST_ID_HEADER] = client_id or wire_id
        return response
