"""Open Inference Protocol v2 bodies as the client writes and reads them: the shared codec's client side.

The codec itself is :mod:`schemas.oip` (the gateway uses the same one): requests are encoded from numpy
arrays, JSON or with binary tensors; responses are decoded, and checked, into numpy arrays. A malformed
response is a :class:`~schemas.SchemaError` (code UNDECODABLE) that names the output and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from schemas import oip
from schemas.oip import CONTENT_BINARY as BINARY_CONTENT
from schemas.oip import CONTENT_JSON as JSON_CONTENT
from schemas.oip import HEADER_LENGTH, TIMEOUT_HEADER, Array, decode_outputs, decode_response

__all__ = [
    "BINARY_CONTENT",
    "HEADER_LENGTH",
    "JSON_CONTENT",
    "TIMEOUT_HEADER",
    "Array",
    "decode_outputs",
    "decode_response",
    "encode_request",
]


def encode_request(
    inputs: Mapping[str, Array],
    *,
    binary: bool = True,
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an infer request; binary tensors both ways when ``binary``."""
    rendered = oip.encode_request(inputs, binary=binary, outputs=outputs, request_id=request_id, parameters=parameters)
    return rendered.body, rendered.headers
