"""Safe msgpack encode/decode with bounded sizes, and typed field readers for envelopes.

Only msgpack's plain types are ever decoded (no ext types, no object hooks): nothing from the wire
can construct arbitrary Python objects.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack

from .constants import (
    ENVELOPE_VERSION,
    MAX_DECODE_ARRAY_LEN,
    MAX_DECODE_MAP_LEN,
    MAX_DECODE_STR_LEN,
    MAX_ENVELOPE_BYTES,
)
from .errors import SchemaError, UnsupportedEnvelopeError

T = TypeVar("T")


def pack(obj: Any) -> bytes:
    """msgpack-encode plain data (bytes stay bin, str stays str)."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_envelope(data: bytes, kind: str) -> dict[str, Any]:
    """Decode an envelope map of ``kind`` and check its version; raise SchemaError on any fault."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SchemaError(f"{kind}: payload must be bytes, got {type(data).__name__}")
    if len(data) > MAX_ENVELOPE_BYTES:
        raise SchemaError(f"{kind}: payload of {len(data)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_DECODE_STR_LEN,
            max_bin_len=MAX_ENVELOPE_BYTES,
            max_array_len=MAX_DECODE_ARRAY_LEN,
            max_map_len=MAX_DECODE_MAP_LEN,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise SchemaError(f"{kind}: not valid msgpack ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise SchemaError(f"{kind}: envelope must be a map, got {type(obj).__name__}")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SchemaError(f"{kind}: missing or invalid envelope version 'v'")
    if version > ENVELOPE_VERSION:
        raise UnsupportedEnvelopeError(
            f"{kind}: envelope version {version} is newer than supported version {ENVELOPE_VERSION}; "
            "upgrade this service"
        )
    return obj


def field(obj: dict[str, Any], key: str, kind: type[T], *, optional: bool = False) -> T:
    """Typed read of ``obj[key]``; ``optional`` allows a missing or nil value (returned as None)."""
    value = obj.get(key)
    if value is None:
        if optional:
            return None  # type: ignore[return-value]  # callers annotate T | None
        raise SchemaError(f"missing field {key!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SchemaError(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value
