"""The client reads responses as strictly as the gateway reads requests (the shared ``schemas.oip`` codec), and
never sends JSON that would change its BYTES on the way (pure; no servers)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from fleet.client.wire import decode_response, encode_request
from schemas import ErrorCode, SchemaError


def test_bytes_that_are_not_utf8_cannot_go_as_json() -> None:
    # JSON carries text; b"\xff" has no text form, and replacing it would send other bytes than the caller's.
    with pytest.raises(SchemaError, match="input 's': BYTES element 1 is not UTF-8 text") as info:
        encode_request({"s": np.array([b"ok", b"\xff"], dtype=object)}, binary=False)
    assert info.value.code is ErrorCode.INVALID_INPUT
    body, _ = encode_request({"s": np.array([b"ok", b"\xff"], dtype=object)}, binary=True)  # binary is exact
    assert body.endswith(b"\x02\x00\x00\x00ok\x01\x00\x00\x00\xff")


def _json(datatype: str, shape: list[int], data: Any) -> tuple[bytes, None]:
    return json.dumps({"outputs": [{"name": "y", "datatype": datatype, "shape": shape, "data": data}]}).encode(), None


def _binary(datatype: str, shape: list[int], blob: bytes, size: int | None = None) -> tuple[bytes, int]:
    entry = {"name": "y", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size or len(blob)}}
    header = json.dumps({"outputs": [entry]}).encode()
    return header + blob, len(header)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (_json("INT32", [2], [1.5, 2]), "output 'y': INT32 data must be integers"),  # was truncated to [1, 2]
        (_json("FP32", [2], ["1.5", 2]), "output 'y': FP32 data must be numbers"),  # was parsed from the string
        (_json("BOOL", [2], [1, 0]), "output 'y': BOOL data must be booleans"),  # was cast
        (_json("UINT8", [1], [256]), "output 'y': values out of range for UINT8"),  # was an OverflowError
        (_json("BYTES", [2], ["a", 1]), "output 'y': BYTES data must be strings"),  # was b"1"
        (_binary("BOOL", [2], b"\x00\x02"), "output 'y': BOOL data must be bytes 0 or 1"),
        (_binary("FP32", [1], b"\x00" * 8, 4), "invalid response: 4 bytes of binary data follow the last binary"),
    ],
    ids=["int-fraction", "float-string", "bool-int", "uint8-range", "bytes-number", "bool-byte", "trailing-bytes"],
)
def test_a_response_that_does_not_fit_its_declaration_is_refused(
    response: tuple[bytes, int | None], message: str
) -> None:
    body, length = response
    with pytest.raises(SchemaError) as info:
        decode_response(body, length)
    assert message in info.value.message
    assert info.value.code is ErrorCode.UNDECODABLE
