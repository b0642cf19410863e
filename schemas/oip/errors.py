"""Errors of the OIP v2 codec: a body that does not follow the protocol, or one tensor that does not fit.

Both are :class:`~schemas.SchemaError`. Their codes depend on the side that reads the body: a request
(the gateway) gets INVALID_REQUEST / INVALID_INPUT, a response (the client) UNDECODABLE. The gateway maps
them to its own errors in one place (``gateway.protocol``), keeping the message.
"""

from __future__ import annotations

from enum import Enum

from ..errors import ErrorCode, SchemaError


class Side(Enum):
    """Which body a codec function reads or writes: the words and codes of its errors."""

    REQUEST = ("request", "input", ErrorCode.INVALID_REQUEST, ErrorCode.INVALID_INPUT)
    RESPONSE = ("response", "output", ErrorCode.UNDECODABLE, ErrorCode.UNDECODABLE)

    def __init__(self, body: str, tensor: str, body_code: ErrorCode, tensor_code: ErrorCode) -> None:
        self.body = body
        self.tensor = tensor
        self.body_code = body_code
        self.tensor_code = tensor_code


class OipBodyError(SchemaError):
    """The body as a whole (JSON, headers, parameters, the list of tensors) does not follow the protocol."""

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, problem: str, side: Side = Side.REQUEST) -> None:
        super().__init__(f"invalid {side.body}: {problem}", code=side.body_code)
        self.problem = problem


class OipTensorError(SchemaError):
    """One tensor's data does not agree with its declaration (or with the model's datatype)."""

    code = ErrorCode.INVALID_INPUT

    def __init__(self, tensor: str, problem: str, side: Side = Side.REQUEST) -> None:
        super().__init__(f"{side.tensor} {tensor!r}: {problem}", code=side.tensor_code)
        self.tensor = tensor
        self.problem = problem
