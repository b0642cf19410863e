"""The frame of an OIP v2 body, both ways: the JSON part, the binary extension, and one tensor entry.

Binary extension: the ``Inference-Header-Content-Length`` header gives the length of the JSON header at
the start of the body; the raw tensors follow in the order of the entries that carry
``parameters.binary_data_size`` instead of ``data``.

JSON is read and written with orjson (an OIP body of 64 floats parses about 4x faster than with the standard
library, numpy data renders 16-27x faster). What orjson refuses to read and the standard library reads (the
bare ``NaN``/``Infinity`` tokens a request may carry, numbers beyond the double range, escaped lone
surrogates), and any body that is not JSON at all, is read again by the standard library, so the language
the gateway accepts and its error messages are the standard library's. An integer beyond 64 bits reads
as a float either way (as orjson reads it): the integer datatypes refuse it as out of range, a parameter
holds the float (msgpack has no such integer to forward).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..envelopes import ParameterValue
from ..tensors import DATATYPES
from .data import json_data
from .errors import OipBodyError, OipTensorError, Side

#: Length of the JSON header of a binary-extension body (request and response).
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Request header with the client's timeout in milliseconds (the body parameter ``timeout_ms`` wins).
TIMEOUT_HEADER = "X-Fleet-Timeout-Ms"
#: Request header naming the priority lane, ``interactive`` (the default) or ``bulk`` (the parameter ``lane`` wins).
LANE_HEADER = "X-Fleet-Lane"
CONTENT_JSON = "application/json"
CONTENT_BINARY = "application/octet-stream"

_PARAMETER_TYPES = (str, int, float, bool)


@dataclass(frozen=True, slots=True)
class Rendered:
    """An HTTP body with its content type and, for binary bodies, the JSON header length."""

    body: bytes
    content_type: str
    header_length: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The HTTP headers that go with the body."""
        if self.header_length is None:
            return {"Content-Type": self.content_type}
        return {"Content-Type": self.content_type, HEADER_LENGTH: str(self.header_length)}


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``inputs``/``outputs`` entry, checked: either JSON ``data`` or a slice of the binary part."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None
    blob: memoryview | None = None


class BinaryCursor:
    """Hands out consecutive slices of the binary part of a body."""

    def __init__(self, data: memoryview, side: Side) -> None:
        self._data = data
        self._offset = 0
        self._side = side

    @property
    def remaining(self) -> int:
        """Bytes not yet handed out."""
        return len(self._data) - self._offset

    def take(self, size: int, tensor: str) -> memoryview:
        """The next ``size`` bytes, for ``tensor``; OipTensorError when the body is shorter."""
        if size > self.remaining:
            raise OipTensorError(
                tensor, f"binary_data_size {size} runs past the body ({self.remaining} binary bytes left)", self._side
            )
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def finish(self) -> None:
        """OipBodyError when bytes are left after the last binary tensor."""
        if self.remaining:
            side = self._side
            raise OipBodyError(f"{self.remaining} bytes of binary data follow the last binary {side.tensor}", side)


def split_body(body: bytes, header_length: str | int | None, side: Side) -> tuple[dict[str, Any], BinaryCursor | None]:
    """The JSON object at the start of ``body`` and a cursor over the binary part (None without the header)."""
    if header_length is None:
        return _load_json(body, side), None
    length = _parse_header_length(header_length, len(body), side)
    view = memoryview(body)
    return _load_json(view[:length], side), BinaryCursor(view[length:], side)


def _parse_header_length(value: str | int, body_length: int, side: Side) -> int:
    if isinstance(value, int):
        length = value
    else:
        try:
            length = int(value)
        except ValueError:
            raise OipBodyError(f"{HEADER_LENGTH} {value!r} is not an integer", side) from None
    if length < 0:
        raise OipBodyError(f"{HEADER_LENGTH} {length} is negative", side)
    if length > body_length:
        raise OipBodyError(f"{HEADER_LENGTH} {length} is past the end of the {body_length}-byte body", side)
    return length


def _load_json(data: bytes | memoryview, side: Side) -> dict[str, Any]:
    if not data:
        raise OipBodyError("empty body; expected a JSON object", side)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = _load_json_stdlib(bytes(data), side)
    if not isinstance(doc, dict):
        raise OipBodyError(f"body must be a JSON object, got {type(doc).__name__}", side)
    return doc


def _load_json_stdlib(data: bytes, side: Side) -> Any:
    """What orjson refused, read by the standard library (see the module doc): the same language and errors
    as before orjson; a body that really is invalid costs a second parse."""
    try:
        doc = json.loads(data, parse_int=_int_within_64_bits)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise OipBodyError(f"body is not valid JSON ({exc})", side) from None
    return doc


def _int_within_64_bits(text: str) -> int | float:
    """An integer literal as orjson reads it: an int within 64 bits (signed or unsigned), else a float."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


def parameters(raw: Any, where: str, side: Side) -> dict[str, ParameterValue]:
    """A ``parameters`` object (strings, numbers and booleans); an absent one is empty."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise OipBodyError(f"'{where}' must be an object", side)
    for key, value in raw.items():
        if not isinstance(value, _PARAMETER_TYPES):
            raise OipBodyError(f"{where}.{key} must be a string, number or boolean", side)
    return dict(raw)


def read_entry(
    raw: Any, index: int, cursor: BinaryCursor | None, side: Side, datatypes: Mapping[str, str] | None = None
) -> Entry:
    """Entry ``index`` of ``inputs`` (a request) or ``outputs`` (a response), checked but not converted.

    ``datatypes`` (name -> expected datatype) refuses a tensor of another datatype before its data is looked at.
    """
    where = f"{side.tensor}s[{index}]"
    if not isinstance(raw, dict):
        raise OipBodyError(f"{where} must be an object", side)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise OipBodyError(f"{where} needs a non-empty string 'name'", side)
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise OipTensorError(name, f"unknown datatype {datatype!r}; expected one of {sorted(DATATYPES)}", side)
    expected = (datatypes or {}).get(name, datatype)
    if datatype != expected:  # the same words as schemas.check_inputs
        raise OipTensorError(name, f"has datatype {datatype}, the model expects {expected}", side)
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise OipTensorError(name, f"'shape' must be a list of non-negative integers, got {shape!r}", side)
    size = parameters(raw.get("parameters"), f"{where}.parameters", side).get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise OipTensorError(name, "missing 'data' (or parameters.binary_data_size)", side)
        return Entry(name, datatype, tuple(shape), data=raw["data"])
    if "data" in raw:
        raise OipTensorError(name, "has both 'data' and parameters.binary_data_size", side)
    if cursor is None:
        raise OipTensorError(name, f"parameters.binary_data_size needs the {HEADER_LENGTH} header", side)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise OipTensorError(name, f"binary_data_size must be a non-negative integer, got {size!r}", side)
    return Entry(name, datatype, tuple(shape), blob=cursor.take(size, name))


def write_entry(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    raw: bytes,
    binary: bool,
    blobs: list[bytes],
    side: Side,
    *,
    plain: bool = False,
) -> dict[str, Any]:
    """The entry of one tensor (raw bytes): JSON ``data``, or ``binary_data_size`` with ``raw`` added to ``blobs``.

    JSON ``data`` of finite numbers is the numpy array itself, for :func:`dumps` (a list with ``plain``).
    """
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(shape)}
    if binary:
        entry["parameters"] = {"binary_data_size": len(raw)}
        blobs.append(raw)
    else:
        entry["data"] = json_data(name, datatype, shape, raw, side, plain=plain)
    return entry


def dumps(doc: Any) -> bytes:
    """Compact JSON of ``doc``, whose values may be numpy arrays.

    orjson writes numpy arrays directly; what it cannot write (an integer beyond 64 bits) the standard
    library does. orjson writes a non-finite float as ``null``: tensor data never holds one here
    (:func:`~schemas.oip.data.json_data` spells them, or asks for ``render(bare_non_finite=True)``).
    """
    try:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=_plain).encode()


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def render(doc: dict[str, Any], blobs: list[bytes], *, bare_non_finite: bool = False, binary: bool = False) -> Rendered:
    """``doc`` as compact JSON followed by ``blobs``: a binary-extension body when there are any (or ``binary``).

    ``bare_non_finite``: the document holds non-finite floats, written as the bare ``NaN``/``Infinity`` tokens
    Python's parser reads (a client's request; the standard library writes it). Otherwise :func:`dumps`.
    """
    if bare_non_finite:
        header = json.dumps(doc, separators=(",", ":"), allow_nan=True, default=_plain).encode()
    else:
        header = dumps(doc)
    if not blobs and not binary:
        return Rendered(header, CONTENT_JSON)
    return Rendered(b"".join([header, *blobs]), CONTENT_BINARY, len(header))
