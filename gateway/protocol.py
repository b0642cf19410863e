"""The gateway's side of the Open Inference Protocol v2 body codec (``schemas.oip``), and its own request knobs.

``parse_infer`` decodes an HTTP body into :class:`InferBody` and ``render_infer`` encodes a worker's
:class:`~schemas.InferenceResponse`; both are the shared codec's. This module is the one place where the
codec's errors become the gateway's: :class:`InvalidRequestError` (the envelope) or
:class:`InvalidInputError` (one tensor), with the same message. Timeout and lane come from a body
parameter or a header (the body wins).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from schemas import Lane
from schemas.oip import (
    CONTENT_JSON,
    HEADER_LENGTH,
    LANE_HEADER,
    TIMEOUT_HEADER,
    InferBody,
    OipBodyError,
    OipTensorError,
    OutputRequest,
    decode_request,
    parse_lane,
)
from schemas.oip import encode_response as render_infer
from schemas.oip.body import dumps

from .errors import InvalidInputError, InvalidRequestError

__all__ = [
    "HEADER_LENGTH",
    "LANE_HEADER",
    "TIMEOUT_HEADER",
    "InferBody",
    "OutputRequest",
    "check_outputs",
    "choose_lane",
    "json_response",
    "parse_infer",
    "parse_timeout_ms",
    "render_infer",
]


def json_response(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer rendered with orjson (``schemas.oip.body.dumps``; numpy arrays allowed)."""
    response = web.Response(body=dumps(doc), status=status, content_type=CONTENT_JSON, charset="utf-8")
    if headers:
        response.headers.update(headers)
    return response


@contextmanager
def _gateway_errors() -> Iterator[None]:
    """The codec's errors as the gateway's (same code, same message)."""
    try:
        yield
    except OipBodyError as exc:
        raise InvalidRequestError(exc.problem) from None
    except OipTensorError as exc:
        raise InvalidInputError(exc.tensor, exc.problem) from None


def parse_infer(body: bytes, header_length: str | None = None, datatypes: Mapping[str, str] | None = None) -> InferBody:
    """Parse an infer body (JSON, or binary extension when ``header_length`` is the header's value).

    ``datatypes`` (input name -> the model's datatype), when given, refuses an input of another datatype
    before its data is converted: millions of elements of the wrong kind cost only the JSON parse.
    """
    with _gateway_errors():
        return decode_request(body, header_length, datatypes)


def choose_lane(body_lane: Lane | None, header: str | None) -> Lane:
    """The request's lane: body parameter, else header, else interactive."""
    if body_lane is not None:
        return body_lane
    if header is None:
        return Lane.INTERACTIVE
    with _gateway_errors():
        return parse_lane(header, LANE_HEADER)


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
