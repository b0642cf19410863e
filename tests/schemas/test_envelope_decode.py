"""The decode fast paths of the envelopes (`schemas.envelopes`) accept and refuse exactly what the typed readers
do: an integer where a float is expected is taken as a float, anything else of the wrong type is the reader's
error, and a malformed tensor is `Tensor.from_wire`'s."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import InferenceRequest, InferenceResponse, SchemaError
from schemas.codec import pack
from schemas.envelopes import InferenceRequestBatch, unpack_responses

TENSOR = ["x", "FP32", [1, 2], b"\0" * 8]


def _request(**fields: Any) -> bytes:
    wire = {"v": 1, "id": "r", "model": "m", "version": "1", "inputs": [TENSOR], "created_ms": 5.0}
    return pack({**wire, **fields})


def _response(**fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": "r", "model": "m", "version": "1", "outputs": [TENSOR], **fields}


def test_integers_for_float_fields_are_taken_as_floats() -> None:
    request = InferenceRequest.from_bytes(_request(created_ms=5, deadline_ms=7))
    assert (request.created_ms, request.deadline_ms) == (5.0, 7.0)
    assert isinstance(request.created_ms, float) and isinstance(request.deadline_ms, float)
    response = InferenceResponse.from_wire(_response(queue_ms=2, compute_ms=3))
    assert (response.queue_ms, response.compute_ms) == (2.0, 3.0) and isinstance(response.queue_ms, float)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": 3}, "field 'id' must be str, got int"),
        ({"created_ms": True}, "field 'created_ms' must be float, got bool"),
        ({"created_ms": None}, "missing field 'created_ms'"),
        ({"deadline_ms": "soon"}, "field 'deadline_ms' must be float, got str"),
        ({"inputs": [["x", "FP32", [1, 2]]]}, "tensor must be [name, datatype, shape, data]"),
        ({"inputs": [["x", "FP32", [1, 2], "text"]]}, "tensor shape must be a list and data must be bytes"),
        ({"inputs": [["x", "FP32", [1, 3], b"\0" * 8]]}, "8 data bytes"),
        ({"inputs": [["x", "FP32", [1, True], b"\0" * 4]]}, "must hold non-negative integers"),
    ],
)
def test_a_wrong_type_is_the_readers_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        InferenceRequest.from_bytes(_request(**fields))


def test_a_bad_member_and_a_bad_response_are_reported_not_raised() -> None:
    batch = pack(
        {
            "v": 1,
            "kind": "batch",
            "model": "m",
            "version": "1",
            "reply": ["stream", "s"],
            "requests": [
                {"id": "ok", "inputs": [TENSOR], "created_ms": 1},
                {"id": "bad", "inputs": [TENSOR], "created_ms": "x"},
            ],
        }
    )
    good, bad = InferenceRequestBatch.members_from_bytes(batch)
    assert isinstance(good, InferenceRequest) and good.created_ms == 1.0
    assert not isinstance(bad, InferenceRequest) and "created_ms" in bad.error.message
    responses, errors = unpack_responses(pack({"v": 1, "responses": [_response(), _response(worker=5)]}))
    assert [r.id for r in responses] == ["r"] and "field 'worker' must be str" in errors[0].message
