"""The client's gRPC transport: the gateway's OIP v2 gRPC service (``inference.GRPCInferenceService``).

:class:`~fleet.client.FleetClient` uses it for a ``grpc://host:port`` (or ``grpcs://`` for TLS) URL, or when
``grpc=True``. Tensors always travel raw (``raw_input_contents`` / ``raw_output_contents``). A failed call raises
what the HTTP transport raises for the same failure: :class:`FleetHTTPError` with the HTTP status of the gateway's
error code (read from the ``fleet-error-code`` trailing metadata; the gRPC status otherwise), and
:class:`ClientError` when the gateway cannot be reached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from schemas import HTTP_STATUS, ErrorCode, SchemaError, Tensor
from schemas.oip.data import array_from_binary
from schemas.oip_grpc import METHODS, method_path, pb

from .errors import ClientError, FleetHTTPError
from .wire import Array

#: Trailing metadata key in which the gateway names its error code (``gateway.grpc_service``).
ERROR_CODE_METADATA = "fleet-error-code"
#: URL schemes that select this transport.
SCHEMES = ("grpc://", "grpcs://")
_MAX_MESSAGE_BYTES = 1 << 30

#: The error code a gRPC status stands for when the gateway did not name one (the transport's own failures).
_CODES_BY_STATUS: dict[grpc.StatusCode, ErrorCode] = {
    grpc.StatusCode.INVALID_ARGUMENT: ErrorCode.INVALID_REQUEST,
    grpc.StatusCode.NOT_FOUND: ErrorCode.MODEL_NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorCode.PAYLOAD_TOO_LARGE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAUTHENTICATED: ErrorCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: ErrorCode.FORBIDDEN,
    grpc.StatusCode.UNAVAILABLE: ErrorCode.BACKEND_UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION: ErrorCode.CONFLICT,
    grpc.StatusCode.CANCELLED: ErrorCode.CANCELLED,
}


def is_grpc_url(url: str) -> bool:
    """True for a ``grpc://`` or ``grpcs://`` URL."""
    return url.lower().startswith(SCHEMES)


def grpc_target(url: str) -> tuple[str, bool]:
    """``host:port`` of a gRPC URL (a bare ``host:port`` too) and whether it asks for TLS."""
    lowered = url.lower()
    tls = lowered.startswith("grpcs://")
    for scheme in SCHEMES:
        if lowered.startswith(scheme):
            url = url[len(scheme) :]
    target = url.rstrip("/")
    if not target or "/" in target:
        raise ClientError(f"a gRPC gateway address is host:port (grpc://host:port), not {url!r}")
    return target, tls


def infer_request(
    model: str,
    inputs: Mapping[str, Array],
    *,
    version: str | None = None,
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest for numpy ``inputs`` (every tensor raw); SchemaError for a dtype OIP has no name for."""
    request = pb.ModelInferRequest(model_name=model, model_version=version or "", id=request_id or "")
    for name, value in inputs.items():
        tensor = Tensor.from_numpy(name, value)
        request.inputs.add(name=name, datatype=tensor.datatype, shape=tensor.shape)
        request.raw_input_contents.append(tensor.data)
    for name in outputs or ():
        request.outputs.add(name=name)
    for key, param in (parameters or {}).items():
        _set_parameter(request.parameters[key], key, param)
    return request


def _set_parameter(target: pb.InferParameter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        kind = type(value).__name__
        raise SchemaError(f"parameter {key!r}: a gRPC parameter is a bool, int, float or str, not {kind}")


def response_arrays(response: pb.ModelInferResponse) -> dict[str, Array]:
    """The outputs of a ModelInferResponse as numpy arrays (checked against their shape and datatype)."""
    raw = response.raw_output_contents
    if len(raw) != len(response.outputs):
        raise SchemaError(f"the answer holds {len(raw)} raw outputs for {len(response.outputs)} outputs")
    return {
        out.name: array_from_binary(out.name, out.datatype, tuple(int(d) for d in out.shape), data)
        for out, data in zip(response.outputs, raw, strict=True)
    }


def response_parameters(response: pb.ModelInferResponse) -> dict[str, Any]:
    """The response's parameters as plain values."""
    params = response.parameters
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param") for key, value in params.items()}


class GrpcTransport:
    """One channel to the gateway's gRPC service and the calls FleetClient makes over it."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self.target, self._tls = grpc_target(url)
        self._metadata = tuple((key.lower(), value) for key, value in headers.items())
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}

    async def start(self) -> None:
        """Open the channel (it connects on the first call)."""
        if self._channel is None:
            options = [
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ]
            if self._tls:
                channel = grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(), options=options)
            else:
                channel = grpc.aio.insecure_channel(self.target, options=options)
            self._channel = channel
            self._calls = {
                name: channel.unary_unary(
                    method_path(name),
                    request_serializer=method.request.SerializeToString,
                    response_deserializer=method.response.FromString,
                )
                for name, method in METHODS.items()
                if not method.streaming
            }

    async def close(self) -> None:
        """Close the channel; idempotent."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(None)

    async def call(self, method: str, request: Message, timeout_s: float | None) -> Any:
        """One unary RPC; a failure becomes FleetHTTPError (the gateway answered) or ClientError."""
        if self._channel is None:
            await self.start()
        try:
            return await self._calls[method](request, timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._error(method, exc) from None

    def _error(self, method: str, exc: grpc.aio.AioRpcError) -> ClientError:
        status = exc.code()
        details = exc.details() or status.name
        named = _trailing(exc, ERROR_CODE_METADATA)
        if named is None and status is grpc.StatusCode.UNAVAILABLE:
            return ClientError(f"cannot reach the gateway at grpc://{self.target}: {details}")
        if named is not None and named in ErrorCode.__members__:
            code = ErrorCode(named)
        else:
            code = _CODES_BY_STATUS.get(status, ErrorCode.INTERNAL)
        return FleetHTTPError(HTTP_STATUS.get(code, 500), details, code=code, grpc_status=status.name)

    async def infer(self, request: pb.ModelInferRequest, timeout_s: float) -> pb.ModelInferResponse:
        """ModelInfer with ``timeout_s`` as the call's deadline (the gateway's deadline for the request)."""
        response: pb.ModelInferResponse = await self.call("ModelInfer", request, timeout_s)
        return response

    async def ready(self) -> bool:
        """ServerReady; False when the gateway is down or not ready."""
        try:
            response = await self.call("ServerReady", pb.ServerReadyRequest(), None)
        except ClientError:
            return False
        return bool(response.ready)

    async def server_metadata(self, timeout_s: float) -> dict[str, Any]:
        """ServerMetadata, as ``GET /v2`` answers it."""
        answer = await self.call("ServerMetadata", pb.ServerMetadataRequest(), timeout_s)
        return {"name": answer.name, "version": answer.version, "extensions": list(answer.extensions)}

    async def model_metadata(self, model: str, version: str | None, timeout_s: float) -> dict[str, Any]:
        """ModelMetadata, as ``GET /v2/models/{model}[/versions/{version}]`` answers it."""
        request = pb.ModelMetadataRequest(name=model, version=version or "")
        answer = await self.call("ModelMetadata", request, timeout_s)
        return {
            "name": answer.name,
            "versions": list(answer.versions),
            "platform": answer.platform,
            "inputs": [_tensor_metadata(t) for t in answer.inputs],
            "outputs": [_tensor_metadata(t) for t in answer.outputs],
        }

    async def model_ready(self, model: str, version: str | None, timeout_s: float) -> bool:
        """ModelReady: whether a live worker serves the model (version) now; False for an unknown model."""
        answer = await self.call("ModelReady", pb.ModelReadyRequest(name=model, version=version or ""), timeout_s)
        return bool(answer.ready)


def _trailing(exc: grpc.aio.AioRpcError, key: str) -> str | None:
    """A string entry of the call's trailing metadata."""
    for entry in exc.trailing_metadata() or ():
        name, value = entry[0], entry[1]  # type: ignore[index]  # grpc-stubs types an entry as opaque
        if name == key and isinstance(value, str):
            return value
    return None


def _tensor_metadata(tensor: pb.ModelMetadataResponse.TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": [int(d) for d in tensor.shape]}
