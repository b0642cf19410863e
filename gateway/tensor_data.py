"""Tensor data of OIP v2 bodies <-> wire tensors: JSON ``data`` lists and raw binary-extension bytes.

Pure. JSON data may be flat or nested lists (at most ``MAX_DATA_DEPTH`` levels); its element count must
match the shape and its values the datatype (booleans for BOOL, integers in range for the integer types,
numbers for FP*, strings for BYTES). Binary data is raw little-endian and row-major; BYTES elements are
4-byte length-prefixed.

Output data is strict JSON: non-finite floats, which JSON has no number for, are the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (what ``float()`` and ``numpy.array(..., dtype=float32)`` read back, so
tritonclient's ``as_numpy`` still works), never the bare tokens ``NaN``/``Infinity`` that strict parsers reject.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from schemas import NUMPY_DTYPES, SchemaError, Tensor
from schemas.tensors import decode_bytes_elements, encode_bytes_elements

from .errors import InvalidInputError

_INT_TYPES = {name for name, dtype in NUMPY_DTYPES.items() if dtype.kind in "iu"}
#: Most levels of nested lists in a JSON ``data`` value (the outer list is level 1).
MAX_DATA_DEPTH = 32
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def tensor_from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> Tensor:
    """The wire tensor for a JSON ``data`` list; InvalidInputError names what does not fit."""
    if not isinstance(data, list):
        raise InvalidInputError(name, "'data' must be a (possibly nested) list")
    count = math.prod(shape)
    _check_depth(name, data)
    if datatype == "BYTES":
        flat = _flatten(data, name)
        _check_count(name, len(flat), shape, count)
        if not all(isinstance(x, str) for x in flat):
            raise InvalidInputError(name, "BYTES data must be strings")
        return Tensor(name, datatype, shape, encode_bytes_elements(_utf8(name, flat)))
    try:
        array = np.array(data)
    except (ValueError, TypeError, RecursionError):
        raise InvalidInputError(name, "'data' is a ragged nested list") from None
    _check_count(name, int(array.size), shape, count)
    if count and datatype in _INT_TYPES and array.dtype.kind in "fO":
        # numpy promotes ints past int64 to float (or object): check the values themselves.
        array = _exact_integers(name, datatype, _flatten(data, name))
    elif count:
        _check_kind(name, datatype, array)
    return Tensor(name, datatype, shape, array.astype(NUMPY_DTYPES[datatype]).tobytes())


def _utf8(name: str, flat: list[str]) -> list[bytes]:
    """UTF-8 of each string; a lone surrogate (JSON may escape one: "\\udc80") has none and is INVALID_INPUT."""
    try:
        return [x.encode() for x in flat]
    except UnicodeEncodeError:
        index = next(i for i, x in enumerate(flat) if not _encodable(x))
        raise InvalidInputError(name, f"BYTES element {index} is not Unicode text (a lone surrogate)") from None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _exact_integers(name: str, datatype: str, flat: list[Any]) -> np.ndarray[Any, Any]:
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in flat):
        raise InvalidInputError(name, f"{datatype} data must be integers")
    try:
        return np.array(flat, dtype=NUMPY_DTYPES[datatype])
    except OverflowError:
        raise InvalidInputError(name, f"values out of range for {datatype}") from None


def _check_count(name: str, found: int, shape: tuple[int, ...], count: int) -> None:
    if found != count:
        raise InvalidInputError(name, f"'data' holds {found} values but shape {list(shape)} needs {count}")


def _check_kind(name: str, datatype: str, array: np.ndarray[Any, Any]) -> None:
    kind = array.dtype.kind
    if datatype == "BOOL":
        ok = kind == "b"
    elif datatype in _INT_TYPES:
        ok = kind in "iu"
        if ok:
            info = np.iinfo(NUMPY_DTYPES[datatype])
            if array.min() < info.min or array.max() > info.max:
                raise InvalidInputError(name, f"values out of range for {datatype}")
    else:
        ok = kind in "iuf"
    if not ok:
        expected = "booleans" if datatype == "BOOL" else ("integers" if datatype in _INT_TYPES else "numbers")
        raise InvalidInputError(name, f"{datatype} data must be {expected}")


def _check_depth(name: str, data: list[Any]) -> None:
    """Along the first elements (numpy finds any other list of a different depth ragged)."""
    depth, item = 1, data
    while item and isinstance(item[0], list):
        depth, item = depth + 1, item[0]
        if depth > MAX_DATA_DEPTH:
            raise InvalidInputError(name, f"'data' is nested more than {MAX_DATA_DEPTH} levels deep")


def _flatten(data: list[Any], name: str, depth: int = 1) -> list[Any]:
    if depth > MAX_DATA_DEPTH:
        raise InvalidInputError(name, f"'data' is nested more than {MAX_DATA_DEPTH} levels deep")
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(_flatten(item, name, depth + 1))
        else:
            flat.append(item)
    return flat


def tensor_from_binary(name: str, datatype: str, shape: tuple[int, ...], data: bytes) -> Tensor:
    """The wire tensor for raw binary-extension bytes, checked against shape and datatype."""
    count = math.prod(shape)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        try:
            decode_bytes_elements(data, count)
        except SchemaError as exc:
            raise InvalidInputError(name, f"{exc.message} (shape {list(shape)} needs {count} elements)") from None
    elif len(data) != count * dtype.itemsize:
        raise InvalidInputError(
            name,
            f"binary_data_size {len(data)} does not fit shape {list(shape)} of {datatype} "
            f"({count * dtype.itemsize} bytes)",
        )
    elif datatype == "BOOL" and data.translate(None, b"\x00\x01"):
        raise InvalidInputError(name, "BOOL data must be bytes 0 or 1")
    return Tensor(name, datatype, shape, data)


def json_data(tensor: Tensor) -> list[Any]:
    """The flat JSON ``data`` list of a tensor (BYTES elements decoded as UTF-8, invalid bytes replaced)."""
    if tensor.datatype == "BYTES":
        count = math.prod(tensor.shape)
        return [item.decode("utf-8", "replace") for item in decode_bytes_elements(tensor.data, count)]
    array = np.frombuffer(tensor.data, dtype=NUMPY_DTYPES[tensor.datatype])
    values: list[Any] = array.tolist()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return [x if math.isfinite(x) else _NON_FINITE.get(x, "NaN") for x in values]
    return values
