"""Input limits the gateway applies besides the body size: HTTP header sizes and tensor element counts.

The whole list (see README "Security"): body size (``max_body_bytes``, 413), request line and header
sizes and count (aiohttp's parser, 400), input tensor elements (``max_tensor_elements``, 400; also
``schemas.constants.MAX_TENSOR_ELEMENTS``/``MAX_TENSOR_RANK`` for every tensor decoded anywhere), and
the msgpack decode limits of ``schemas.codec`` on everything read from Kafka or Redis.
"""

from __future__ import annotations

import math

from .errors import InvalidInputError
from .protocol import InferBody


def check_tensor_elements(body: InferBody, limit: int) -> None:
    """InvalidInputError for the first input tensor with more than ``limit`` elements."""
    for tensor in body.inputs:
        count = math.prod(tensor.shape)
        if count > limit:
            raise InvalidInputError(
                tensor.name, f"{count} elements exceed the limit of {limit} (FLEET_GATEWAY_MAX_TENSOR_ELEMENTS)"
            )
