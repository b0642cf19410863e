"""``inference.GRPCInferenceService``: the OIP v2 gRPC service (Triton's, with its configuration, statistics and
repository index extensions) on the gateway's request path.

Every RPC but ServerLive, ServerReady and ServerMetadata (open, like ``/v2`` and the health routes) needs an
API key when auth is on (``authorization: Bearer <key>`` or ``x-api-key`` metadata); a model outside the
key's allow-list is PERMISSION_DENIED, an infer request draws from the same rate limits as over HTTP. The
gRPC deadline is the request's deadline. A FleetError is answered with its status code (``grpc_codec.STATUS``),
its message as details and its code in the ``fleet-error-code`` trailing metadata (``retry-after`` too when the
HTTP answer would carry it). ModelStreamInfer answers each request on the stream as soon as its reply arrives
(many in flight on one stream); a failed request is a stream message with ``error_message``, the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message

from common import tracing
from schemas import FleetError
from schemas.apikeys import ApiKey
from schemas.oip_grpc import METHODS, SERVICE, config_pb, pb

from .auth import API_KEY_HEADER, AuthError, Guard, UnauthenticatedError
from .errors import GatewayError, ModelNotFoundError, VersionNotFoundError, redis_bounded
from .grpc_codec import decode_infer, encode_infer, status_of
from .infer_path import InferPath
from .metrics import GatewayMetrics
from .model_config import ModelDescriptions
from .repository import READY
from .routes import EXTENSIONS, PLATFORMS, SERVER_NAME

log = logging.getLogger("fleet.gateway")

#: Trailing metadata key carrying the error code of a failed call.
ERROR_CODE_METADATA = "fleet-error-code"
_AUTHORIZATION = "authorization"
_API_KEY = API_KEY_HEADER.lower()

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


def presented_secret(metadata: dict[str, str]) -> str | None:
    """The key in ``authorization: Bearer`` (wins) or ``x-api-key`` metadata; None when neither is there."""
    header = metadata.get(_AUTHORIZATION)
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if _API_KEY not in metadata:
            raise UnauthenticatedError("the authorization metadata must read 'Bearer <key>'")
    key = metadata.get(_API_KEY)
    return key.strip() if key is not None else None


def _metadata(context: Context) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class GrpcInferenceService:
    """The service's handlers; ``handler()`` is what a grpc.aio server registers."""

    def __init__(
        self, path: InferPath, descriptions: ModelDescriptions, guard: Guard, metrics: GatewayMetrics, version: str
    ) -> None:
        self._path = path
        self._descriptions = descriptions
        self._guard = guard
        self._metrics = metrics
        self._version = version

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """Every RPC of ``schemas.oip_grpc.METHODS`` bound to its handler."""
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, method in METHODS.items():
            if method.streaming:
                handlers[name] = grpc.stream_stream_rpc_method_handler(
                    self.model_stream_infer,
                    request_deserializer=method.request.FromString,
                    response_serializer=method.response.SerializeToString,
                )
            else:
                handlers[name] = grpc.unary_unary_rpc_method_handler(
                    self._guarded(getattr(self, _snake(name))),
                    request_deserializer=method.request.FromString,
                    response_serializer=method.response.SerializeToString,
                )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _guarded(self, rpc: Callable[[Req, Context], Awaitable[Resp]]) -> Callable[[Req, Context], Awaitable[Resp]]:
        async def call(request: Req, context: Context) -> Resp:
            try:
                return await rpc(request, context)
            except FleetError as exc:
                error = exc
            except Exception:
                log.exception("unexpected error in a gRPC call")
                error = FleetError("internal error")
            await _abort(context, error)
            raise AssertionError("unreachable: abort raises")

        return call

    async def _authorize(self, context: Context, model: str | None, *, infer: bool = False) -> ApiKey | None:
        try:
            return await self._guard.authorize(presented_secret(_metadata(context)), model, infer=infer)
        except AuthError as exc:
            if infer and model:
                self._metrics.refused(model, exc.code.value)
            raise

    # server --------------------------------------------------------------------------------------------------
    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        """The process answers."""
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        """Kafka and Redis reachable and replies flowing (as ``/v2/health/ready``)."""
        return pb.ServerReadyResponse(ready=not await self._path.readiness_problems())

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        """Name, version and extensions (as ``GET /v2``)."""
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=list(EXTENSIONS))

    # models --------------------------------------------------------------------------------------------------
    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        """Whether a live worker serves the model (version) now; false for an unknown one, as Triton answers."""
        await self._authorize(context, request.name)
        try:
            record = await self._path.record(request.name, request.version)
        except (ModelNotFoundError, VersionNotFoundError):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=await self._path.model_ready(record))

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        """Name, versions, platform, inputs and outputs (as ``GET /v2/models/{m}``)."""
        await self._authorize(context, request.name)
        record = await self._path.record(request.name, request.version)
        versions = [record.version] if request.version else await self._path.versions(record.name)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=record.name,
            versions=versions,
            platform=PLATFORMS.get(record.framework, record.framework.value),
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in record.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in record.outputs],
        )

    async def model_config(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        """Triton's model configuration (``gateway.model_config``)."""
        await self._authorize(context, request.name)
        document = await self._descriptions.config(request.name, request.version)
        return pb.ModelConfigResponse(config=ParseDict(document, config_pb.ModelConfig()))

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        """Triton's statistics of one model, or of every model the key may use when no name is given."""
        key = await self._authorize(context, request.name or None)
        document = await self._descriptions.statistics(request.name or None, request.version or None, key)
        return ParseDict(document, pb.ModelStatisticsResponse())

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        """Every registered version the key may use, READY (as ``POST /v2/repository/index``)."""
        key = await self._authorize(context, None)
        registry = self._path.registry
        timeout_s = self._descriptions.timeout_s
        models = await redis_bounded(registry.models(), timeout_s, "registry listing")
        models = [m for m in models if key is None or key.allows(m)]
        versions = await redis_bounded(asyncio.gather(*(registry.versions(m) for m in models)), timeout_s, "versions")
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[entry(name=m, version=v, state=READY) for m, vs in zip(models, versions, strict=True) for v in vs]
        )

    # inference -----------------------------------------------------------------------------------------------
    async def model_infer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        """Serve one request; its deadline is the call's."""
        return await self._infer(request, context)

    async def _infer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        with tracing.grpc_span("ModelInfer", context, request.model_name, request.model_version):
            await self._authorize(context, request.model_name, infer=True)
            body = decode_infer(request)
            served = await self._path.infer(
                request.model_name, request.model_version or None, body, request.ByteSize(), context.time_remaining()
            )
        record, response = served.record, served.response
        return encode_infer(response.outputs, record.name, record.version, request.id, (o.name for o in body.outputs))

    async def model_stream_infer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request served concurrently, its answer sent as soon as it is there (any order)."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def serve(request: pb.ModelInferRequest) -> None:
            answers.put_nowait(await self._stream_answer(request, context))

        async def read_routine() -> None:
            try:
                async for request in requests:
                    task = asyncio.create_task(serve(request))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                while pending:
                    await asyncio.gather(*list(pending))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read_routine())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader  # re-raises what ended the request stream
        finally:
            # The client went away (or the call was cancelled): nothing is left to answer.
            for task in (reader, *pending):
                task.cancel()
            await asyncio.gather(reader, *pending, return_exceptions=True)

    async def _stream_answer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
        except FleetError as exc:
            message = exc.message
            _log_failure(exc)
        except Exception:
            log.exception("unexpected error in a streamed request")
            message = "internal error"
        failed = pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        )
        return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _log_failure(error: FleetError) -> None:
    status = status_of(error.code)
    serious = status in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    log.log(
        logging.WARNING if serious else logging.INFO,
        "gRPC request failed",
        extra={"code": error.code.value, "status": status.name, "error": error.message},
    )


async def _abort(context: Context, error: FleetError) -> None:
    _log_failure(error)
    trailing = [(ERROR_CODE_METADATA, error.code.value)]
    if isinstance(error, GatewayError) and "Retry-After" in error.headers:
        trailing.append(("retry-after", error.headers["Retry-After"]))
    await context.abort(status_of(error.code), error.message, trailing_metadata=tuple(trailing))
