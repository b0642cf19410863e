"""Tensor data of OIP v2 bodies, both ways: JSON ``data`` lists and raw binary-extension bytes.

Reading is strict and the same for requests and responses: JSON data may be flat or nested lists (at most
``MAX_DATA_DEPTH`` levels); its element count must match the shape and its values the datatype (booleans
for BOOL, integers in range for the integer types, numbers for FP*, strings for BYTES). Binary data is raw
little-endian and row-major; BYTES elements are 4-byte length-prefixed; BOOL bytes are 0 or 1.

Non-finite floats: JSON has no number for them. A response spells them ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` (what ``float()`` and ``numpy.array(..., dtype=float32)`` read back, so tritonclient's
``as_numpy`` still works), never the bare tokens strict parsers reject; a response reader accepts those
strings. A request keeps Python's bare tokens, which the gateway reads (with the standard library: ``body``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import SchemaError
from ..tensors import NUMPY_DTYPES, Tensor, decode_bytes_elements, encode_bytes_elements
from .errors import OipTensorError, Side

Array = npt.NDArray[Any]

#: Most levels of nested lists in a JSON ``data`` value (the outer list is level 1).
MAX_DATA_DEPTH = 32
_INT_TYPES = frozenset(name for name, dtype in NUMPY_DTYPES.items() if dtype.kind in "iu")
_FLOAT_TYPES = frozenset(name for name, dtype in NUMPY_DTYPES.items() if dtype.kind == "f")
_BEYOND_64_BITS = 2.0**64
_SPELLED = {math.inf: "Infinity", -math.inf: "-Infinity"}
_SPELLINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# reading -------------------------------------------------------------------------------------------------


def tensor_from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any, side: Side = Side.REQUEST) -> Tensor:
    """The wire tensor for a JSON ``data`` list; OipTensorError names what does not fit."""
    values = _json_values(name, datatype, shape, data, side)
    raw = encode_bytes_elements(values) if isinstance(values, list) else values.tobytes()
    return make_tensor(name, datatype, shape, raw, side)


def array_from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any, side: Side = Side.RESPONSE) -> Array:
    """The numpy array for a JSON ``data`` list (BYTES: an object array of ``bytes``), checked like a tensor."""
    values = _json_values(name, datatype, shape, data, side)
    if isinstance(values, list):
        return _object_array(values, shape)
    return values.reshape(shape)


def tensor_from_binary(
    name: str, datatype: str, shape: tuple[int, ...], data: bytes, side: Side = Side.REQUEST
) -> Tensor:
    """The wire tensor for raw binary-extension bytes, checked against shape and datatype."""
    check_binary(name, datatype, shape, data, side)
    return make_tensor(name, datatype, shape, data, side)


def array_from_binary(
    name: str, datatype: str, shape: tuple[int, ...], data: bytes | memoryview, side: Side = Side.RESPONSE
) -> Array:
    """The numpy array for raw binary-extension bytes (numeric arrays are read-only views of ``data``)."""
    items = check_binary(name, datatype, shape, data, side)
    if items is not None:
        return _object_array(items, shape)
    return np.frombuffer(data, dtype=NUMPY_DTYPES[datatype]).reshape(shape)


def check_binary(
    name: str, datatype: str, shape: tuple[int, ...], data: bytes | memoryview, side: Side
) -> list[bytes] | None:
    """OipTensorError unless ``data`` holds exactly ``shape`` of ``datatype``; BYTES elements are returned."""
    count = math.prod(shape)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        try:
            return decode_bytes_elements(bytes(data), count)
        except SchemaError as exc:
            raise OipTensorError(name, f"{exc.message} (shape {list(shape)} needs {count} elements)", side) from None
    if len(data) != count * dtype.itemsize:
        raise OipTensorError(
            name,
            f"binary_data_size {len(data)} does not fit shape {list(shape)} of {datatype} "
            f"({count * dtype.itemsize} bytes)",
            side,
        )
    if datatype == "BOOL" and bytes(data).translate(None, b"\x00\x01"):
        raise OipTensorError(name, "BOOL data must be bytes 0 or 1", side)
    return None


def make_tensor(name: str, datatype: str, shape: tuple[int, ...], data: bytes, side: Side) -> Tensor:
    """``Tensor(...)``; its own limits (rank, elements) become OipTensorError."""
    try:
        return Tensor(name, datatype, shape, data)
    except SchemaError as exc:
        raise OipTensorError(name, exc.message, side) from None


def _object_array(items: list[bytes], shape: tuple[int, ...]) -> Array:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def _json_values(name: str, datatype: str, shape: tuple[int, ...], data: Any, side: Side) -> Array | list[bytes]:
    """Flat BYTES elements, or a numpy array of ``datatype`` (in the nesting of ``data``)."""
    if not isinstance(data, list):
        raise OipTensorError(name, "'data' must be a (possibly nested) list", side)
    count = math.prod(shape)
    _check_depth(name, data, side)
    if datatype == "BYTES":
        flat = _flatten(data, name, side)
        _check_count(name, len(flat), shape, count, side)
        if not all(isinstance(x, str) for x in flat):
            raise OipTensorError(name, "BYTES data must be strings", side)
        return _utf8(name, flat, side)
    try:
        array = np.array(data)
    except (ValueError, TypeError, RecursionError):
        raise OipTensorError(name, "'data' is a ragged nested list", side) from None
    _check_count(name, int(array.size), shape, count, side)
    if count and datatype in _INT_TYPES and array.dtype.kind in "fO":
        # numpy promotes ints past int64 to float (or object): check the values themselves.
        array = _exact_integers(name, datatype, _flatten(data, name, side), side)
    elif count and side is Side.RESPONSE and datatype in _FLOAT_TYPES and array.dtype.kind in "UO":
        array = _spelled_floats(name, datatype, _flatten(data, name, side), side)
    elif count:
        _check_kind(name, datatype, array, side)
    return array.astype(NUMPY_DTYPES[datatype])


def _utf8(name: str, flat: list[str], side: Side) -> list[bytes]:
    """UTF-8 of each string; a lone surrogate (JSON may escape one: "\\udc80") has none and is an error."""
    try:
        return [x.encode() for x in flat]
    except UnicodeEncodeError:
        index = next(i for i, x in enumerate(flat) if not _encodable(x))
        raise OipTensorError(name, f"BYTES element {index} is not Unicode text (a lone surrogate)", side) from None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _exact_integers(name: str, datatype: str, flat: list[Any], side: Side) -> Array:
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in flat):
        if any(isinstance(x, float) and (x >= _BEYOND_64_BITS or x <= -_BEYOND_64_BITS / 2) for x in flat):
            # what orjson reads an integer literal beyond 64 bits as (a float; rounding may reach the edge)
            raise OipTensorError(name, f"values out of range for {datatype}", side)
        raise OipTensorError(name, f"{datatype} data must be integers", side)
    try:
        return np.array(flat, dtype=NUMPY_DTYPES[datatype])
    except OverflowError:
        raise OipTensorError(name, f"values out of range for {datatype}", side) from None


def _spelled_floats(name: str, datatype: str, flat: list[Any], side: Side) -> Array:
    """Numbers and the spelled non-finite floats of a response (``"NaN"``, ``"Infinity"``, ``"-Infinity"``)."""
    values: list[float] = []
    for x in flat:
        if isinstance(x, str) and x in _SPELLINGS:
            values.append(_SPELLINGS[x])
        elif isinstance(x, int | float) and not isinstance(x, bool):
            values.append(x)
        else:
            raise OipTensorError(name, f"{datatype} data must be numbers", side)
    return np.array(values, dtype=NUMPY_DTYPES[datatype])


def _check_count(name: str, found: int, shape: tuple[int, ...], count: int, side: Side) -> None:
    if found != count:
        raise OipTensorError(name, f"'data' holds {found} values but shape {list(shape)} needs {count}", side)


def _check_kind(name: str, datatype: str, array: Array, side: Side) -> None:
    kind = array.dtype.kind
    if datatype == "BOOL":
        ok = kind == "b"
    elif datatype in _INT_TYPES:
        ok = kind in "iu"
        if ok:
            info = np.iinfo(NUMPY_DTYPES[datatype])
            if array.min() < info.min or array.max() > info.max:
                raise OipTensorError(name, f"values out of range for {datatype}", side)
    else:
        ok = kind in "iuf"
    if not ok:
        expected = "booleans" if datatype == "BOOL" else ("integers" if datatype in _INT_TYPES else "numbers")
        raise OipTensorError(name, f"{datatype} data must be {expected}", side)


def _check_depth(name: str, data: list[Any], side: Side) -> None:
    """Along the first elements (numpy finds any other list of a different depth ragged)."""
    depth, item = 1, data
    while item and isinstance(item[0], list):
        depth, item = depth + 1, item[0]
        if depth > MAX_DATA_DEPTH:
            raise OipTensorError(name, f"'data' is nested more than {MAX_DATA_DEPTH} levels deep", side)


def _flatten(data: list[Any], name: str, side: Side, depth: int = 1) -> list[Any]:
    if depth > MAX_DATA_DEPTH:
        raise OipTensorError(name, f"'data' is nested more than {MAX_DATA_DEPTH} levels deep", side)
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(_flatten(item, name, side, depth + 1))
        else:
            flat.append(item)
    return flat


# writing -------------------------------------------------------------------------------------------------


def tensor_bytes(array: Array, datatype: str) -> bytes:
    """Raw little-endian row-major bytes of ``array`` (length-prefixed elements for BYTES)."""
    if datatype == "BYTES":
        return encode_bytes_elements([_as_bytes(x) for x in array.reshape(-1).tolist()])
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()


def json_data(name: str, datatype: str, shape: tuple[int, ...], data: bytes, side: Side, *, plain: bool = False) -> Any:
    """The flat JSON ``data`` of raw tensor bytes: finite numbers as the flat numpy array itself (orjson writes
    it straight, ``body.dumps``), or as a list with ``plain`` (for the standard library's ``json``).

    A response (the gateway's) replaces invalid UTF-8 in BYTES elements and spells non-finite floats; a
    request (the client's) refuses BYTES that are not UTF-8 text (they would change on the way: send them
    binary) and keeps non-finite floats as floats (a list: see :func:`has_non_finite`).
    """
    if datatype == "BYTES":
        items = decode_bytes_elements(data, math.prod(shape))
        if side is Side.RESPONSE:
            return [item.decode("utf-8", "replace") for item in items]
        return _text(name, items, side)
    array = np.frombuffer(data, dtype=NUMPY_DTYPES[datatype])
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return array.tolist() if plain else array
    values: list[Any] = array.tolist()
    if side is Side.RESPONSE:
        return [x if math.isfinite(x) else _SPELLED.get(x, "NaN") for x in values]
    return values


def has_non_finite(array: Array) -> bool:
    """Whether a numeric array holds NaN or an infinity (a request body then needs the bare tokens)."""
    return array.dtype.kind == "f" and not bool(np.isfinite(array).all())


def _text(name: str, items: list[bytes], side: Side) -> list[str]:
    texts: list[str] = []
    for index, item in enumerate(items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            problem = f"BYTES element {index} is not UTF-8 text; send it as binary data"
            raise OipTensorError(name, problem, side) from None
    return texts


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")
