"""Round trips and rejections of the msgpack envelopes."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from schemas import (
    DeadLetter,
    ErrorCode,
    ErrorInfo,
    InferenceRequest,
    InferenceResponse,
    ReplyAddress,
    ReplyKind,
    SchemaError,
    Tensor,
    UnsupportedEnvelopeError,
    now_ms,
)
from schemas.constants import ENVELOPE_VERSION


def _request(**overrides: object) -> InferenceRequest:
    fields: dict[str, object] = {
        "id": "r1",
        "model": "m",
        "version": "2",
        "inputs": (Tensor.from_numpy("x", np.arange(8, dtype=np.float32).reshape(2, 4)),),
        "reply": ReplyAddress(ReplyKind.STREAM, "fleet:replies:g1"),
        "outputs": ("y",),
        "parameters": {"a": 1, "b": "s", "c": True, "d": 0.5},
        "deadline_ms": now_ms() + 1000,
    }
    fields.update(overrides)
    return InferenceRequest(**fields)  # type: ignore[arg-type]


def test_request_round_trip() -> None:
    request = _request()
    decoded = InferenceRequest.from_bytes(request.to_bytes())
    assert decoded == request
    np.testing.assert_array_equal(decoded.inputs[0].to_numpy(), request.inputs[0].to_numpy())


def test_response_round_trip_with_error() -> None:
    response = InferenceResponse.failure(_request(), ErrorCode.MODEL_ERROR, "boom", worker="w1")
    decoded = InferenceResponse.from_bytes(response.to_bytes())
    assert decoded.error == ErrorInfo(ErrorCode.MODEL_ERROR, "boom")
    assert decoded.worker == "w1"


def test_response_round_trip_with_outputs() -> None:
    out = Tensor.from_numpy("y", np.ones((2, 3), dtype=np.float64))
    response = InferenceResponse("r1", "m", "1", outputs=(out,), batch_size=7, queue_ms=1.5, compute_ms=0.25)
    assert InferenceResponse.from_bytes(response.to_bytes()) == response


def test_dead_letter_round_trip() -> None:
    letter = DeadLetter(ErrorCode.UNDECODABLE, "not msgpack", "t", 3, 42, b"\xff\x00", b"k", (("h", b"v"),))
    assert DeadLetter.from_bytes(letter.to_bytes()) == letter


def test_newer_envelope_version_is_rejected_clearly() -> None:
    raw = msgpack.unpackb(_request().to_bytes())
    raw["v"] = ENVELOPE_VERSION + 1
    with pytest.raises(UnsupportedEnvelopeError, match="newer than supported") as info:
        InferenceRequest.from_bytes(msgpack.packb(raw))
    assert info.value.code is ErrorCode.UNSUPPORTED_ENVELOPE


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "must be a map"),
        (msgpack.packb({"id": "x"}), "envelope version"),
        (msgpack.packb({"v": 1, "id": 5}), "field 'id' must be str"),
        (msgpack.packb({"v": 1, "id": "x", "model": "m", "version": "1", "inputs": "no"}), "list of tensors"),
        (msgpack.packb({"v": "1"}), "envelope version"),
        (
            msgpack.packb({"v": 1, "id": "a", "model": "m", "version": "1", "inputs": [["x", "FP32", [2], b"\0"]]}),
            "needs 8",
        ),
        (
            msgpack.packb({"v": 1, "id": "a", "model": "m", "version": "1", "inputs": [], "reply": ["carrier", ""]}),
            "unknown reply kind",
        ),
        (msgpack.ExtType(1, b"x") and msgpack.packb(msgpack.ExtType(1, b"xx")), "not valid msgpack"),
    ],
)
def test_malformed_requests_raise_schema_error(payload: bytes, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        InferenceRequest.from_bytes(payload)


def test_expired() -> None:
    assert _request(deadline_ms=now_ms() - 1).expired()
    assert not _request(deadline_ms=None).expired()


def test_retry_fields_round_trip_and_stay_off_the_wire_on_a_first_try() -> None:
    first = _request()
    assert {"attempt", "not_before_ms"}.isdisjoint(msgpack.unpackb(first.to_bytes()))
    retry = _request(attempt=2, not_before_ms=now_ms() + 500)
    assert InferenceRequest.from_bytes(retry.to_bytes()) == retry
    assert not retry.due() and retry.due(retry.not_before_ms) and first.due()


@pytest.mark.parametrize("attempt", [0, -1, "2", True, 1.5])
def test_bad_attempt_is_rejected(attempt: object) -> None:
    raw = msgpack.unpackb(_request().to_bytes())
    raw["attempt"] = attempt
    with pytest.raises(SchemaError, match="attempt"):
        InferenceRequest.from_bytes(msgpack.packb(raw))
