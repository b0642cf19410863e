"""OIP v2 gRPC messages <-> the gateway's request and response types, and error codes -> gRPC status codes (pure).

Inputs arrive either all in ``raw_input_contents`` (raw little-endian bytes, BYTES elements 4-byte
length-prefixed: exactly the fleet's wire form) or each in its typed ``contents``; outputs always go back in
``raw_output_contents``, as Triton answers. Request parameters ``timeout_ms`` and ``lane`` are the gateway's
(as in an HTTP body); the others are forwarded to the worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
import numpy as np

from schemas import ErrorCode, Lane, Tensor
from schemas.envelopes import ParameterValue
from schemas.oip import LANE_PARAMETER, TIMEOUT_PARAMETER, InferBody, OutputRequest, parse_lane
from schemas.oip.data import make_tensor, tensor_from_binary
from schemas.oip.errors import OipBodyError, OipTensorError, Side
from schemas.oip_grpc import pb
from schemas.tensors import DATATYPES, NUMPY_DTYPES, encode_bytes_elements

from .errors import InvalidInputError, InvalidRequestError

#: gRPC status of each error code (HTTP's table, in gRPC's terms).
STATUS: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNSUPPORTED_ENVELOPE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNDECODABLE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.VERSION_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.JOB_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.REQUEST_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.BACKEND_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.MODEL_LOAD_FAILED: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.MODEL_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.OVERLOADED: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorCode.CLIENT_DISCONNECTED: grpc.StatusCode.CANCELLED,
    ErrorCode.MODEL_ERROR: grpc.StatusCode.INTERNAL,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}

#: The typed ``contents`` field each datatype is read from (FP16 has none: send it raw).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def status_of(code: ErrorCode) -> grpc.StatusCode:
    """The gRPC status code for an error code (INTERNAL for one without an entry)."""
    return STATUS.get(code, grpc.StatusCode.INTERNAL)


def decode_infer(request: pb.ModelInferRequest) -> InferBody:
    """The gateway's view of a ModelInferRequest; InvalidRequestError / InvalidInputError name what is wrong."""
    if not request.inputs:
        raise InvalidRequestError("'inputs' must not be empty")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(
            f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs: "
            "either every input is raw or none"
        )
    try:
        inputs = tuple(_input(tensor, raw[i] if raw else None) for i, tensor in enumerate(request.inputs))
        params = {key: _parameter(key, value) for key, value in request.parameters.items()}
        timeout = params.pop(TIMEOUT_PARAMETER, None)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
            raise OipBodyError(f"parameters.{TIMEOUT_PARAMETER} must be a number of milliseconds")
        lane_value = params.pop(LANE_PARAMETER, None)
        lane: Lane | None = None if lane_value is None else parse_lane(lane_value, f"parameters.{LANE_PARAMETER}")
    except OipBodyError as exc:
        raise InvalidRequestError(exc.problem) from None
    except OipTensorError as exc:
        raise InvalidInputError(exc.tensor, exc.problem) from None
    names = [o.name for o in request.outputs]
    if len(set(names)) != len(names) or not all(names):
        raise InvalidRequestError(f"outputs must name distinct outputs: {names}")
    return InferBody(
        inputs=inputs,
        id=request.id or None,
        outputs=tuple(OutputRequest(name) for name in names),
        parameters=params,
        timeout_ms=None if timeout is None else float(timeout),
        lane=lane,
    )


def _input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> Tensor:
    name, datatype = tensor.name, tensor.datatype
    if not name:
        raise OipBodyError("every input needs a name")
    if datatype not in DATATYPES:
        raise OipTensorError(name, f"unknown datatype {datatype!r}", Side.REQUEST)
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise OipTensorError(name, f"shape {list(shape)} must hold non-negative integers", Side.REQUEST)
    if raw is not None:
        if tensor.HasField("contents"):
            raise OipTensorError(name, "data both in contents and in raw_input_contents", Side.REQUEST)
        return tensor_from_binary(name, datatype, shape, raw)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise OipTensorError(name, f"{datatype} data must be sent in raw_input_contents", Side.REQUEST)
    values: Any = getattr(tensor.contents, field)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(values) != count:
        raise OipTensorError(
            name, f"contents.{field} holds {len(values)} values but shape {list(shape)} needs {count}", Side.REQUEST
        )
    if datatype == "BYTES":
        return make_tensor(name, datatype, shape, encode_bytes_elements(list(values)), Side.REQUEST)
    dtype = NUMPY_DTYPES[datatype]
    array = np.asarray(values, dtype=np.int64 if dtype.kind == "i" else np.uint64 if dtype.kind == "u" else dtype)
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise OipTensorError(name, f"values out of range for {datatype}", Side.REQUEST)
    return make_tensor(name, datatype, shape, array.astype(dtype).tobytes(), Side.REQUEST)


def _parameter(key: str, value: pb.InferParameter) -> ParameterValue:
    choice = value.WhichOneof("parameter_choice")
    if choice is None:
        raise OipBodyError(f"parameters.{key} has no value")
    result: ParameterValue = getattr(value, choice)
    return result


def encode_infer(
    response_outputs: Iterable[Tensor], model: str, version: str, request_id: str, requested: Iterable[str] = ()
) -> pb.ModelInferResponse:
    """A ModelInferResponse with every output (or only the ``requested`` ones) in ``raw_output_contents``."""
    wanted = set(requested)
    answer = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for tensor in response_outputs:
        if wanted and tensor.name not in wanted:
            continue
        answer.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        answer.raw_output_contents.append(tensor.data)
    return answer
