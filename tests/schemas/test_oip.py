"""The one OIP v2 codec, both ways: what the client encodes the gateway decodes, and what the gateway encodes
the client decodes, for every datatype, JSON and binary (pure; no servers)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import schemas.oip
from schemas import ErrorCode, InferenceResponse, Lane, SchemaError, Tensor
from schemas.oip import (
    HEADER_LENGTH,
    InferBody,
    OipBodyError,
    OipTensorError,
    OutputRequest,
    decode_outputs,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

Array = np.ndarray[Any, Any]

#: One array of every datatype (and a few shapes: nested, scalar, empty, extreme values).
ARRAYS: dict[str, Array] = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([0, 7, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([[0], [2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([0, 2**63, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "INT32": np.arange(6, dtype=np.int32).reshape(1, 2, 3),
    "INT64": np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64),
    "FP16": np.array([0.5, -2.0, 65504.0], dtype=np.float16),
    "FP32": np.array([[1.5, -0.25], [3.0, 1e-7]], dtype=np.float32),
    "FP64": np.array([0.1, -1e300, 5e-324], dtype=np.float64),
    "BYTES": np.array([b"a", b"", "h\u00e9llo".encode(), "\U0001f600".encode()], dtype=object),
}
EMPTY: dict[str, Array] = {
    "FP32-empty": np.zeros((0, 4), dtype=np.float32),
    "BYTES-empty": np.empty((2, 0), dtype=object),
    "INT64-scalar": np.array(42, dtype=np.int64),
}
ALL = {**ARRAYS, **EMPTY}


def _same(got: Array, want: Array) -> None:
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    assert got.tolist() == want.tolist()


def _header(rendered: schemas.oip.Rendered) -> str | None:
    return rendered.headers.get(HEADER_LENGTH)


# client encode -> gateway decode ---------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("key", list(ALL))
def test_a_request_the_client_encodes_is_what_the_gateway_decodes(key: str, binary: bool) -> None:
    array = ALL[key]
    rendered = encode_request({"x": array}, binary=binary)
    assert (HEADER_LENGTH in rendered.headers) is binary
    (tensor,) = decode_request(rendered.body, _header(rendered)).inputs
    assert tensor.datatype == key.split("-")[0]
    _same(tensor.to_numpy(), array)


def test_request_fields_survive_the_round_trip() -> None:
    rendered = encode_request(
        {"a": ARRAYS["FP32"], "s": ARRAYS["BYTES"]},
        outputs=["y", "z"],
        request_id="r-1",
        parameters={"timeout_ms": 250, "lane": "bulk", "tag": "t"},
    )
    body = decode_request(rendered.body, _header(rendered), {"a": "FP32", "s": "BYTES"})
    assert [t.name for t in body.inputs] == ["a", "s"]
    assert body.id == "r-1" and body.timeout_ms == 250.0 and body.lane is Lane.BULK
    assert body.parameters == {"tag": "t"} and body.binary_output
    assert body.outputs == (OutputRequest("y", True), OutputRequest("z", True))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8"])
def test_non_finite_inputs_reach_the_gateway(dtype: str, binary: bool) -> None:
    array = np.array([np.nan, np.inf, -np.inf, 1.5], dtype=dtype)
    rendered = encode_request({"x": array}, binary=binary)
    (tensor,) = decode_request(rendered.body, _header(rendered)).inputs
    np.testing.assert_array_equal(tensor.to_numpy(), array)


def test_bytes_that_are_not_utf8_go_binary_and_are_refused_as_json() -> None:
    raw = np.array([b"ok", b"\xff\xfe"], dtype=object)
    rendered = encode_request({"s": raw}, binary=True)
    (tensor,) = decode_request(rendered.body, _header(rendered)).inputs
    assert tensor.to_numpy().tolist() == [b"ok", b"\xff\xfe"]
    with pytest.raises(OipTensorError, match="input 's': BYTES element 1 is not UTF-8 text") as info:
        encode_request({"s": raw}, binary=False)  # JSON would change the bytes on the way
    assert info.value.code is ErrorCode.INVALID_INPUT


# gateway encode -> client decode ---------------------------------------------------------------------------


def _response(*arrays: tuple[str, Array]) -> InferenceResponse:
    outputs = tuple(Tensor.from_numpy(name, array) for name, array in arrays)
    return InferenceResponse(
        "wire-1", "m", "3", outputs=outputs, batch_size=2, queue_ms=0.5, compute_ms=1.25, worker="w"
    )


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("key", list(ALL))
def test_a_response_the_gateway_encodes_is_what_the_client_decodes(key: str, binary: bool) -> None:
    array = ALL[key]
    rendered = encode_response(_response(("y", array)), InferBody(inputs=(), binary_output=binary), "client-id")
    meta, outputs = decode_response(rendered.body, _header(rendered))
    assert meta["id"] == "client-id" and meta["model_version"] == "3"
    assert meta["parameters"] == {"batch_size": 2, "queue_ms": 0.5, "compute_ms": 1.25, "worker": "w"}
    _same(outputs["y"], array)


def test_a_response_mixes_json_and_binary_outputs() -> None:
    request = InferBody(inputs=(), binary_output=True, outputs=(OutputRequest("a", False), OutputRequest("s")))
    response = _response(("a", ARRAYS["INT32"]), ("s", ARRAYS["BYTES"]), ("q", ARRAYS["BOOL"]))
    rendered = encode_response(response, request, "i")
    header = _header(rendered)
    assert header is not None  # "s" is binary
    meta, outputs = decode_response(rendered.body, int(header))
    assert [o["name"] for o in meta["outputs"]] == ["a", "s"]  # only what was asked for
    assert "data" in meta["outputs"][0] and "binary_data_size" in meta["outputs"][1]["parameters"]
    _same(outputs["a"], ARRAYS["INT32"])
    _same(outputs["s"], ARRAYS["BYTES"])


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8"])
def test_non_finite_outputs_are_strict_json_that_the_client_reads_back(dtype: str) -> None:
    array = np.array([np.nan, np.inf, -np.inf, 1.5], dtype=dtype)
    rendered = encode_response(_response(("y", array)), InferBody(inputs=()), "i")
    assert b"NaN" in rendered.body and b'"NaN"' in rendered.body  # spelled as strings, never bare tokens
    _, outputs = decode_response(rendered.body, None)
    np.testing.assert_array_equal(outputs["y"], array)


def test_invalid_utf8_in_a_json_output_is_replaced() -> None:
    rendered = encode_response(_response(("s", np.array([b"\xffok"], dtype=object))), InferBody(inputs=()), "i")
    _, outputs = decode_response(rendered.body, None)
    assert outputs["s"].tolist() == ["\ufffdok".encode()]


def test_job_outputs_decode_like_a_response() -> None:
    rendered = encode_response(_response(("y", ARRAYS["FP64"])), InferBody(inputs=()), "i")
    _same(decode_outputs(json.loads(rendered.body)["outputs"])["y"], ARRAYS["FP64"])
    assert decode_outputs(None) == {}


# errors ----------------------------------------------------------------------------------------------------


def _out(**entry: Any) -> bytes:
    return json.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], **entry}]}).encode()


_SIZED = _out(parameters={"binary_data_size": 8})


@pytest.mark.parametrize(
    ("body", "length", "kind", "message"),
    [
        (b"not json", None, OipBodyError, "invalid response: body is not valid JSON"),
        (b"[1, 2]", None, OipBodyError, "body must be a JSON object, got list"),
        (b'{"outputs": {}}', None, OipBodyError, "'outputs' must be a list"),
        (b'{"outputs": [{"name": "y"}]}', None, OipTensorError, "output 'y': unknown datatype None"),
        (_out(data=[1.0, "x"]), None, OipTensorError, "output 'y': FP32 data must be numbers"),
        (_out(data=[1.0]), None, OipTensorError, "'data' holds 1 values but shape [2] needs 2"),
        (_out(parameters={"binary_data_size": 8}), None, OipTensorError, "needs the Inference-Header"),
        (_SIZED + b"\0" * 4, len(_SIZED), OipTensorError, "output 'y': binary_data_size 8 runs past the body"),
        (b"{}", 99, OipBodyError, "Inference-Header-Content-Length 99 is past the end of the 2-byte body"),
        (b"{}", "x", OipBodyError, "Inference-Header-Content-Length 'x' is not an integer"),
        (b"{}" + b"\0" * 3, 2, OipBodyError, "3 bytes of binary data follow the last binary output"),
    ],
)
def test_a_malformed_response_is_undecodable_and_says_why(
    body: bytes, length: int | str | None, kind: type[SchemaError], message: str
) -> None:
    with pytest.raises(kind) as info:
        decode_response(body, length)
    assert message in info.value.message
    assert info.value.code is ErrorCode.UNDECODABLE


def test_request_errors_keep_the_gateway_codes() -> None:
    with pytest.raises(OipBodyError, match="invalid request: 'inputs' must be a non-empty list") as body_error:
        decode_request(b"{}")
    assert body_error.value.code is ErrorCode.INVALID_REQUEST
    with pytest.raises(OipTensorError, match="input 'x': rank 17|input 'x': tensor rank 17") as tensor_error:
        rendered = encode_request({"x": np.zeros((1,) * 17, dtype=np.float32)})
        decode_request(rendered.body, _header(rendered))
    assert tensor_error.value.code is ErrorCode.INVALID_INPUT


def test_all_is_pinned_and_resolves() -> None:
    assert schemas.oip.__all__ == [
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
    for name in schemas.oip.__all__:
        assert hasattr(schemas.oip, name)
