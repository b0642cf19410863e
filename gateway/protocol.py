"""Open Inference Protocol v2 infer bodies <-> wire tensors: JSON and the binary tensor extension.

Pure functions only (no I/O). ``parse_infer`` turns an HTTP body into :class:`InferBody`;
``render_infer`` turns a worker's :class:`~schemas.InferenceResponse` into an HTTP body. Every
malformed detail raises :class:`InvalidRequestError` (the envelope) or :class:`InvalidInputError`
(one tensor), naming the problem.

Binary extension: the ``Inference-Header-Content-Length`` header gives the length of the JSON
header at the start of the body; the raw little-endian tensors follow in the order of the inputs
that carry ``parameters.binary_data_size`` (BYTES elements are 4-byte length-prefixed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import DATATYPES, InferenceResponse, Lane, ParameterValue, SchemaError, Tensor

from .errors import InvalidInputError, InvalidRequestError
from .tensor_data import json_data, tensor_from_binary, tensor_from_json

#: Length of the JSON header of a binary-extension body (request and response).
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Request header with the client's timeout in milliseconds (the body parameter wins).
TIMEOUT_HEADER = "X-Fleet-Timeout-Ms"
#: Request parameters the gateway consumes itself (never forwarded to workers).
TIMEOUT_PARAMETER = "timeout_ms"
#: Priority lane: parameter ``lane`` or header ``X-Fleet-Lane`` (``interactive``, the default, or ``bulk``).
LANE_PARAMETER = "lane"
LANE_HEADER = "X-Fleet-Lane"
BINARY_OUTPUT_PARAMETER = "binary_data_output"
CONTENT_JSON = "application/json"
CONTENT_BINARY = "application/octet-stream"

_PARAMETER_TYPES = (str, int, float, bool)


@dataclass(frozen=True, slots=True)
class OutputRequest:
    """One entry of the request's ``outputs``: a name and, if set, whether it comes back binary."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True, slots=True)
class InferBody:
    """A parsed infer request."""

    inputs: tuple[Tensor, ...]
    id: str | None = None
    outputs: tuple[OutputRequest, ...] = ()
    parameters: dict[str, ParameterValue] = field(default_factory=dict)  # forwarded to the worker
    binary_output: bool = False  # parameters.binary_data_output
    timeout_ms: float | None = None  # parameters.timeout_ms
    lane: Lane | None = None  # parameters.lane (None: not in the body; see `choose_lane`)

    def binary_for(self, output: str) -> bool:
        """Whether ``output`` is returned as raw binary data (per-output setting wins)."""
        for requested in self.outputs:
            if requested.name == output and requested.binary is not None:
                return requested.binary
        return self.binary_output


@dataclass(frozen=True, slots=True)
class Rendered:
    """An HTTP response body with its content type and, for binary bodies, the JSON header length."""

    body: bytes
    content_type: str
    header_length: int | None = None


class _BinaryCursor:
    """Hands out consecutive slices of the binary part of a body."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def take(self, size: int, tensor: str) -> bytes:
        if size > self.remaining:
            raise InvalidInputError(
                tensor, f"binary_data_size {size} runs past the body ({self.remaining} binary bytes left)"
            )
        chunk = bytes(self._data[self._offset : self._offset + size])
        self._offset += size
        return chunk


def parse_infer(
    body: bytes, header_length: str | None = None, datatypes: Mapping[str, str] | None = None
) -> InferBody:
    """Parse an infer body (JSON, or binary extension when ``header_length`` is the header's value).

    ``datatypes`` (input name -> the model's datatype), when given, refuses an input of another datatype
    before its data is converted: millions of elements of the wrong kind cost only the JSON parse.
    """
    cursor: _BinaryCursor | None = None
    json_part: bytes | memoryview = body
    if header_length is not None:
        length = _parse_header_length(header_length, len(body))
        json_part, cursor = memoryview(body)[:length], _BinaryCursor(memoryview(body)[length:])
    doc = _load_json(bytes(json_part) if isinstance(json_part, memoryview) else json_part)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequestError("'inputs' must be a non-empty list")
    inputs = tuple(_parse_input(raw, i, cursor, datatypes or {}) for i, raw in enumerate(raw_inputs))
    if cursor is not None and cursor.remaining:
        raise InvalidRequestError(f"{cursor.remaining} bytes of binary data follow the last binary input")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequestError("'id' must be a string")
    parameters = _parameters(doc.get("parameters"), "parameters")
    timeout = parameters.pop(TIMEOUT_PARAMETER, None)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise InvalidRequestError(f"parameters.{TIMEOUT_PARAMETER} must be a number of milliseconds")
    lane = parameters.pop(LANE_PARAMETER, None)
    binary_output = parameters.pop(BINARY_OUTPUT_PARAMETER, False)
    if not isinstance(binary_output, bool):
        raise InvalidRequestError(f"parameters.{BINARY_OUTPUT_PARAMETER} must be true or false")
    return InferBody(
        inputs=inputs,
        id=request_id,
        outputs=_parse_outputs(doc.get("outputs")),
        parameters=parameters,
        binary_output=binary_output,
        timeout_ms=None if timeout is None else float(timeout),
        lane=None if lane is None else _lane(lane, f"parameters.{LANE_PARAMETER}"),
    )


def _lane(value: object, where: str) -> Lane:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{where} must be 'interactive' or 'bulk'")
    try:
        return Lane.parse(value)
    except SchemaError as exc:
        raise InvalidRequestError(f"{where}: {exc.message}") from None


def choose_lane(body_lane: Lane | None, header: str | None) -> Lane:
    """The request's lane: body parameter, else header, else interactive."""
    if body_lane is not None:
        return body_lane
    if header is None:
        return Lane.INTERACTIVE
    return _lane(header, LANE_HEADER)


def _parse_header_length(value: str, body_length: int) -> int:
    try:
        length = int(value)
    except ValueError:
        raise InvalidRequestError(f"{HEADER_LENGTH} {value!r} is not an integer") from None
    if length < 0:
        raise InvalidRequestError(f"{HEADER_LENGTH} {length} is negative")
    if length > body_length:
        raise InvalidRequestError(f"{HEADER_LENGTH} {length} is past the end of the {body_length}-byte body")
    return length


def _load_json(data: bytes) -> dict[str, Any]:
    if not data:
        raise InvalidRequestError("empty body; expected a JSON object")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidRequestError(f"body is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidRequestError(f"body must be a JSON object, got {type(doc).__name__}")
    return doc


def _parameters(raw: Any, where: str) -> dict[str, ParameterValue]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"'{where}' must be an object")
    for key, value in raw.items():
        if not isinstance(value, _PARAMETER_TYPES):
            raise InvalidRequestError(f"{where}.{key} must be a string, number or boolean")
    return dict(raw)


def _parse_outputs(raw: Any) -> tuple[OutputRequest, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequestError("'outputs' must be a list")
    outputs: list[OutputRequest] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidRequestError(f"outputs[{i}] must be an object with a string 'name'")
        binary = _parameters(item.get("parameters"), f"outputs[{i}].parameters").get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidRequestError(f"outputs[{i}].parameters.binary_data must be true or false")
        outputs.append(OutputRequest(item["name"], binary))
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise InvalidRequestError(f"outputs name an output twice: {names}")
    return tuple(outputs)


def _parse_input(raw: Any, index: int, cursor: _BinaryCursor | None, datatypes: Mapping[str, str]) -> Tensor:
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"inputs[{index}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"inputs[{index}] needs a non-empty string 'name'")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidInputError(name, f"unknown datatype {datatype!r}; expected one of {sorted(DATATYPES)}")
    expected = datatypes.get(name, datatype)
    if datatype != expected:  # the same words as schemas.check_inputs
        raise InvalidInputError(name, f"has datatype {datatype}, the model expects {expected}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInputError(name, f"'shape' must be a list of non-negative integers, got {shape!r}")
    size = _parameters(raw.get("parameters"), f"inputs[{index}].parameters").get("binary_data_size")
    try:
        if size is None:
            if "data" not in raw:
                raise InvalidInputError(name, "missing 'data' (or parameters.binary_data_size)")
            return tensor_from_json(name, datatype, tuple(shape), raw["data"])
        if "data" in raw:
            raise InvalidInputError(name, "has both 'data' and parameters.binary_data_size")
        if cursor is None:
            raise InvalidInputError(name, f"parameters.binary_data_size needs the {HEADER_LENGTH} header")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInputError(name, f"binary_data_size must be a non-negative integer, got {size!r}")
        return tensor_from_binary(name, datatype, tuple(shape), cursor.take(size, name))
    except SchemaError as exc:  # raised by Tensor itself: rank or element limits
        raise InvalidInputError(name, exc.message) from None


def parse_timeout_ms(body_ms: float | None, header: str | None, default_s: float, max_s: float) -> float:
    """The request's timeout in ms: body parameter, else header, else the default; capped at ``max_s``."""
    if body_ms is None and header is not None:
        try:
            body_ms = float(header)
        except ValueError:
            raise InvalidRequestError(f"{TIMEOUT_HEADER} {header!r} is not a number") from None
    if body_ms is None:
        return default_s * 1000.0
    if not math.isfinite(body_ms) or body_ms <= 0:
        raise InvalidRequestError(f"timeout {body_ms} ms must be a positive number")
    return min(body_ms, max_s * 1000.0)


def check_outputs(available: Iterable[str], body: InferBody) -> None:
    """Raise InvalidRequestError when the request asks for an output the model does not have."""
    known = set(available)
    for requested in body.outputs:
        if requested.name not in known:
            raise InvalidRequestError(f"unknown output {requested.name!r}; the model has {sorted(known)}")


def render_infer(response: InferenceResponse, body: InferBody, request_id: str) -> Rendered:
    """The HTTP body for a successful response: JSON, or binary extension when any output is binary."""
    wanted = {o.name for o in body.outputs}
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in response.outputs:
        if wanted and tensor.name not in wanted:
            continue
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if body.binary_for(tensor.name):
            entry["parameters"] = {"binary_data_size": len(tensor.data)}
            blobs.append(tensor.data)
        else:
            entry["data"] = json_data(tensor)
        entries.append(entry)
    doc = {
        "model_name": response.model,
        "model_version": response.version,
        "id": request_id,
        "parameters": {
            "batch_size": response.batch_size,
            "queue_ms": round(response.queue_ms, 3),
            "compute_ms": round(response.compute_ms, 3),
            "worker": response.worker,
        },
        "outputs": entries,
    }
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()  # json_data spells non-finite floats
    if not blobs:
        return Rendered(header, CONTENT_JSON)
    return Rendered(b"".join([header, *blobs]), CONTENT_BINARY, len(header))
