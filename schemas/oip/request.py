"""OIP v2 infer requests: the client encodes them from numpy arrays, the gateway decodes them into tensors."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..envelopes import ParameterValue
from ..errors import SchemaError
from ..names import Lane
from ..tensors import Tensor, datatype_of
from .body import BinaryCursor, Entry, Rendered, parameters, read_entry, render, split_body, write_entry
from .data import Array, has_non_finite, tensor_bytes, tensor_from_binary, tensor_from_json
from .errors import OipBodyError, Side

#: Request parameters the gateway consumes itself (never forwarded to workers).
TIMEOUT_PARAMETER = "timeout_ms"
LANE_PARAMETER = "lane"
BINARY_OUTPUT_PARAMETER = "binary_data_output"


@dataclass(frozen=True, slots=True)
class OutputRequest:
    """One entry of the request's ``outputs``: a name and, if set, whether it comes back binary."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True, slots=True)
class InferBody:
    """A decoded infer request."""

    inputs: tuple[Tensor, ...]
    id: str | None = None
    outputs: tuple[OutputRequest, ...] = ()
    parameters: dict[str, ParameterValue] = field(default_factory=dict)  # forwarded to the worker
    binary_output: bool = False  # parameters.binary_data_output
    timeout_ms: float | None = None  # parameters.timeout_ms
    lane: Lane | None = None  # parameters.lane (None: not in the body)

    def binary_for(self, output: str) -> bool:
        """Whether ``output`` is returned as raw binary data (per-output setting wins)."""
        for requested in self.outputs:
            if requested.name == output and requested.binary is not None:
                return requested.binary
        return self.binary_output


def decode_request(
    body: bytes, header_length: str | None = None, datatypes: Mapping[str, str] | None = None
) -> InferBody:
    """Decode an infer body (JSON, or binary extension when ``header_length`` is the header's value).

    ``datatypes`` (input name -> the model's datatype), when given, refuses an input of another datatype
    before its data is converted: millions of elements of the wrong kind cost only the JSON parse.
    OipBodyError (INVALID_REQUEST) or OipTensorError (INVALID_INPUT) name what is wrong.
    """
    doc, cursor = split_body(body, header_length, Side.REQUEST)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise OipBodyError("'inputs' must be a non-empty list")
    inputs = tuple(_input(raw, i, cursor, datatypes) for i, raw in enumerate(raw_inputs))
    if cursor is not None:
        cursor.finish()
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OipBodyError("'id' must be a string")
    params = parameters(doc.get("parameters"), "parameters", Side.REQUEST)
    timeout = params.pop(TIMEOUT_PARAMETER, None)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        raise OipBodyError(f"parameters.{TIMEOUT_PARAMETER} must be a number of milliseconds")
    lane = params.pop(LANE_PARAMETER, None)
    binary_output = params.pop(BINARY_OUTPUT_PARAMETER, False)
    if not isinstance(binary_output, bool):
        raise OipBodyError(f"parameters.{BINARY_OUTPUT_PARAMETER} must be true or false")
    return InferBody(
        inputs=inputs,
        id=request_id,
        outputs=_outputs(doc.get("outputs")),
        parameters=params,
        binary_output=binary_output,
        timeout_ms=None if timeout is None else float(timeout),
        lane=None if lane is None else parse_lane(lane, f"parameters.{LANE_PARAMETER}"),
    )


def parse_lane(value: object, where: str) -> Lane:
    """The lane ``value`` names (a body parameter or a header, ``where``); OipBodyError otherwise."""
    if not isinstance(value, str):
        raise OipBodyError(f"{where} must be 'interactive' or 'bulk'")
    try:
        return Lane.parse(value)
    except SchemaError as exc:
        raise OipBodyError(f"{where}: {exc.message}") from None


def _input(raw: Any, index: int, cursor: BinaryCursor | None, datatypes: Mapping[str, str] | None) -> Tensor:
    entry: Entry = read_entry(raw, index, cursor, Side.REQUEST, datatypes)
    if entry.blob is not None:
        return tensor_from_binary(entry.name, entry.datatype, entry.shape, bytes(entry.blob))
    return tensor_from_json(entry.name, entry.datatype, entry.shape, entry.data)


def _outputs(raw: Any) -> tuple[OutputRequest, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise OipBodyError("'outputs' must be a list")
    outputs: list[OutputRequest] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise OipBodyError(f"outputs[{i}] must be an object with a string 'name'")
        binary = parameters(item.get("parameters"), f"outputs[{i}].parameters", Side.REQUEST).get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise OipBodyError(f"outputs[{i}].parameters.binary_data must be true or false")
        outputs.append(OutputRequest(item["name"], binary))
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise OipBodyError(f"outputs name an output twice: {names}")
    return tuple(outputs)


def encode_request(
    inputs: Mapping[str, Array],
    *,
    binary: bool = True,
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Rendered:
    """The body of an infer request for numpy ``inputs``: binary tensors both ways when ``binary``.

    OipTensorError (INVALID_INPUT) for BYTES that are not UTF-8 text in a JSON body; SchemaError for an
    array dtype without an OIP datatype.
    """
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    bare_non_finite = False
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = datatype_of(array)
        raw = tensor_bytes(array, datatype)
        entries.append(write_entry(name, datatype, array.shape, raw, binary, blobs, Side.REQUEST))
        bare_non_finite = bare_non_finite or (not binary and has_non_finite(array))
    doc: dict[str, Any] = {"inputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    params = dict(parameters or {})
    if binary:
        params[BINARY_OUTPUT_PARAMETER] = True
    if params:
        doc["parameters"] = params
        bare_non_finite = bare_non_finite or any(isinstance(v, float) and not math.isfinite(v) for v in params.values())
    if outputs:
        extra = {"parameters": {"binary_data": True}} if binary else {}
        doc["outputs"] = [{"name": n, **extra} for n in outputs]
    # Non-finite floats go as Python's NaN/Infinity tokens, which the gateway reads (orjson would write null).
    return render(doc, blobs, bare_non_finite=bare_non_finite, binary=binary)
