"""The Open Inference Protocol v2 HTTP body codec (JSON and the binary tensor extension), both ways.

One codec for both sides: the client encodes requests (``encode_request``) and decodes responses
(``decode_response``); the gateway decodes requests (``decode_request``) and encodes responses
(``encode_response``). Pure functions, no I/O. Reading is strict on both sides and every problem is a
:class:`~schemas.SchemaError`: :class:`OipBodyError` for the body, :class:`OipTensorError` for one tensor
(codes INVALID_REQUEST / INVALID_INPUT when reading a request, UNDECODABLE when reading a response).
"""

from .body import CONTENT_BINARY, CONTENT_JSON, HEADER_LENGTH, LANE_HEADER, TIMEOUT_HEADER, Rendered
from .data import MAX_DATA_DEPTH, Array
from .errors import OipBodyError, OipTensorError, Side
from .request import (
    BINARY_OUTPUT_PARAMETER,
    LANE_PARAMETER,
    TIMEOUT_PARAMETER,
    InferBody,
    OutputRequest,
    decode_request,
    encode_request,
    parse_lane,
)
from .response import decode_outputs, decode_response, encode_response

__all__ = [
    "BINARY_OUTPUT_PARAMETER",
    "CONTENT_BINARY",
    "CONTENT_JSON",
    "HEADER_LENGTH",
    "LANE_HEADER",
    "LANE_PARAMETER",
    "MAX_DATA_DEPTH",
    "TIMEOUT_HEADER",
    "TIMEOUT_PARAMETER",
    "Array",
    "InferBody",
    "OipBodyError",
    "OipTensorError",
    "OutputRequest",
    "Rendered",
    "Side",
    "decode_outputs",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "parse_lane",
]
