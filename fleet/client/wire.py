"""Open Inference Protocol v2 bodies as the client writes and reads them: JSON and the binary extension.

Binary extension: the body is a JSON header followed by raw tensor bytes; the header's length travels in
``Inference-Header-Content-Length``. A binary tensor carries ``parameters.binary_data_size`` instead of
``data`` and its bytes follow in the order the tensors are listed. ``BYTES`` elements are each a 4-byte
little-endian length and the bytes. Pure functions, no I/O: the client and the tests share them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas import NUMPY_DTYPES, SchemaError, datatype_of
from schemas.tensors import decode_bytes_elements, element_count, encode_bytes_elements

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT = "application/json"
BINARY_CONTENT = "application/octet-stream"

Array = npt.NDArray[Any]


def tensor_bytes(array: Array, datatype: str) -> bytes:
    """Raw little-endian row-major bytes of ``array`` (length-prefixed elements for BYTES)."""
    if datatype == "BYTES":
        return encode_bytes_elements([_as_bytes(x) for x in array.reshape(-1).tolist()])
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()


def tensor_from_bytes(data: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str) -> Array:
    """Inverse of :func:`tensor_bytes` (numeric results are read-only views of ``data``)."""
    count = element_count(shape)
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = decode_bytes_elements(bytes(data), count)
        return array.reshape(shape)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise SchemaError(f"output {name!r}: unknown datatype {datatype!r}")
    if len(data) != count * dtype.itemsize:
        needed = count * dtype.itemsize
        raise SchemaError(f"output {name!r}: {len(data)} bytes, but {datatype}{list(shape)} needs {needed}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def json_data(array: Array, datatype: str) -> list[Any]:
    """Flat, row-major JSON list of ``array`` (BYTES elements as utf-8 strings)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [_as_bytes(x).decode("utf-8") for x in flat.tolist()]
    if datatype == "FP16":
        flat = flat.astype(np.float32)
    return list(flat.tolist())


def tensor_from_json(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> Array:
    """numpy array of a JSON ``data`` list (flat or nested) of the given datatype and shape."""
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).reshape(-1)
            array = np.empty(flat.size, dtype=object)
            array[:] = [_as_bytes(x) for x in flat.tolist()]
            return array.reshape(shape)
        return np.asarray(data, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
    except (KeyError, ValueError, TypeError) as exc:
        raise SchemaError(f"output {name!r}: data does not fit {datatype}{list(shape)}: {exc}") from exc


def encode_request(
    inputs: Mapping[str, Array],
    *,
    binary: bool = True,
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an infer request; binary tensors both ways when ``binary``."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if binary:
            raw = tensor_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = json_data(array, datatype)
        entries.append(entry)
    body: dict[str, Any] = {"inputs": entries}
    if request_id is not None:
        body["id"] = request_id
    params = dict(parameters or {})
    if binary:
        params["binary_data_output"] = True
    if params:
        body["parameters"] = params
    if outputs:
        extra = {"parameters": {"binary_data": True}} if binary else {}
        body["outputs"] = [{"name": n, **extra} for n in outputs]
    header = json.dumps(body, separators=(",", ":")).encode()
    if not binary:
        return header, {"Content-Type": JSON_CONTENT}
    return b"".join([header, *chunks]), {"Content-Type": BINARY_CONTENT, HEADER_LENGTH: str(len(header))}


def decode_response(body: bytes, header_length: int | None) -> tuple[dict[str, Any], dict[str, Array]]:
    """The JSON part of a response and its outputs as numpy arrays (binary or JSON data)."""
    size = len(body) if header_length is None else header_length
    if not 0 <= size <= len(body):
        raise SchemaError(f"{HEADER_LENGTH}={size} does not fit a body of {len(body)} bytes")
    try:
        meta = json.loads(body[:size])
    except ValueError as exc:
        raise SchemaError(f"response is not JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("outputs", []), list):
        raise SchemaError("response must be a JSON object with an 'outputs' list")
    view = memoryview(body)
    offset = size
    arrays: dict[str, Array] = {}
    for out in meta.get("outputs", []):
        try:
            name, datatype, shape = str(out["name"]), str(out["datatype"]), tuple(int(d) for d in out["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"malformed output entry {out!r}") from exc
        nbytes = (out.get("parameters") or {}).get("binary_data_size")
        if nbytes is None:
            arrays[name] = tensor_from_json(out.get("data"), datatype, shape, name)
            continue
        if offset + int(nbytes) > len(body):
            raise SchemaError(f"output {name!r}: binary data runs past the body")
        arrays[name] = tensor_from_bytes(view[offset : offset + int(nbytes)], datatype, shape, name)
        offset += int(nbytes)
    return meta, arrays


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")
