"""Parsing and rendering OIP v2 bodies (pure; no servers)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from gateway.errors import InvalidInputError, InvalidRequestError
from gateway.protocol import (
    InferBody,
    OutputRequest,
    check_outputs,
    choose_lane,
    parse_infer,
    parse_timeout_ms,
    render_infer,
)
from schemas import ErrorCode, FleetError, InferenceResponse, Lane, Tensor


def body(*inputs: dict[str, Any], **top: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **top}).encode()


def tensor(name: str = "x", datatype: str = "FP32", shape: Any = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [2, 2] if shape is None else shape, **extra}


def binary(doc: dict[str, Any], *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(doc).encode()
    return head + b"".join(blobs), str(len(head))


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


# JSON tensors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("FP32", [1, 2.5, 3, 4], np.array([[1, 2.5], [3, 4]], "<f4")),
        ("FP32", [[1, 2.5], [3, 4]], np.array([[1, 2.5], [3, 4]], "<f4")),  # nested lists
        ("FP16", [0.5, 1, -2, 65504], np.array([[0.5, 1], [-2, 65504]], "<f2")),
        ("FP64", [[0.1], [0.2], [0.3], [0.4]], np.array([[0.1, 0.2], [0.3, 0.4]], "<f8")),
        ("INT8", [-128, 0, 1, 127], np.array([[-128, 0], [1, 127]], "i1")),
        ("UINT64", [0, 1, 2, 2**64 - 1], np.array([[0, 1], [2, 2**64 - 1]], "<u8")),
        ("INT64", [[[1, 2]], [[3, 4]]], np.array([[1, 2], [3, 4]], "<i8")),
        ("BOOL", [[True, False], [False, True]], np.array([[True, False], [False, True]])),
    ],
)
def test_json_tensors_round_trip_through_numpy(datatype: str, data: Any, expected: np.ndarray[Any, Any]) -> None:
    parsed = parse_infer(body(tensor(datatype=datatype, data=data)))
    (t,) = parsed.inputs
    assert (t.name, t.datatype, t.shape) == ("x", datatype, (2, 2))
    np.testing.assert_array_equal(t.to_numpy(), expected)


def test_json_bytes_and_empty_tensors() -> None:
    parsed = parse_infer(
        body(
            tensor("s", "BYTES", [3], data=["a", "", "héllo"]),
            tensor("e", "FP32", [0, 4], data=[]),
        )
    )
    s, e = parsed.inputs
    assert s.to_numpy().tolist() == [b"a", b"", "héllo".encode()]
    assert e.shape == (0, 4) and e.data == b""


def test_request_fields() -> None:
    parsed = parse_infer(
        body(
            tensor(data=[0] * 4),
            id="abc",
            parameters={"timeout_ms": 250, "binary_data_output": True, "priority": 2, "tag": "x"},
            outputs=[{"name": "y", "parameters": {"binary_data": False}}, {"name": "z"}],
        )
    )
    assert parsed.id == "abc" and parsed.timeout_ms == 250.0 and parsed.binary_output
    assert parsed.parameters == {"priority": 2, "tag": "x"}  # the gateway's own are not forwarded
    assert parsed.outputs == (OutputRequest("y", False), OutputRequest("z", None))
    assert not parsed.binary_for("y") and parsed.binary_for("z") and parsed.binary_for("other")


# binary extension ---------------------------------------------------------------------------------------


def test_binary_inputs_mixed_with_json() -> None:
    a = np.arange(6, dtype="<i4").reshape(2, 3)
    flags = np.array([True, False, True])
    strings = bytes_elements(b"ab", b"", b"\x00\xff")
    doc = {
        "inputs": [
            tensor("a", "INT32", [2, 3], parameters={"binary_data_size": a.nbytes}),
            tensor("j", "FP32", [1], data=[1.5]),
            tensor("s", "BYTES", [3], parameters={"binary_data_size": len(strings)}),
            tensor("b", "BOOL", [3], parameters={"binary_data_size": 3}),
        ]
    }
    data, length = binary(doc, a.tobytes(), strings, flags.tobytes())
    ta, tj, ts, tb = parse_infer(data, length).inputs
    np.testing.assert_array_equal(ta.to_numpy(), a)
    assert tj.to_numpy().tolist() == [1.5]
    assert ts.to_numpy().tolist() == [b"ab", b"", b"\x00\xff"]
    np.testing.assert_array_equal(tb.to_numpy(), flags)


def test_header_length_without_binary_inputs_is_plain_json() -> None:
    data = body(tensor(data=[1, 2, 3, 4]))
    assert parse_infer(data, str(len(data))).inputs[0].shape == (2, 2)


# malformed requests -------------------------------------------------------------------------------------

_FP32_4 = {"binary_data_size": 16}
_SHORT = b"\x09\0\0\0ab"  # a BYTES element that claims 9 bytes but has 2


@pytest.mark.parametrize(
    ("data", "header", "code", "message"),
    [
        (b"", None, ErrorCode.INVALID_REQUEST, "empty body"),
        (b"{nope", None, ErrorCode.INVALID_REQUEST, "not valid JSON"),
        (b"\xff\xfe\x00", None, ErrorCode.INVALID_REQUEST, "not valid JSON"),
        (b"[1, 2]", None, ErrorCode.INVALID_REQUEST, "must be a JSON object"),
        (b"{}", None, ErrorCode.INVALID_REQUEST, "'inputs' must be a non-empty list"),
        (body(), None, ErrorCode.INVALID_REQUEST, "'inputs' must be a non-empty list"),
        (body("x"), None, ErrorCode.INVALID_REQUEST, "inputs[0] must be an object"),  # type: ignore[arg-type]
        (body({"datatype": "FP32", "shape": [1], "data": [1]}), None, ErrorCode.INVALID_REQUEST, "string 'name'"),
        (body(tensor(datatype="FP8", data=[1] * 4)), None, ErrorCode.INVALID_INPUT, "unknown datatype 'FP8'"),
        (body(tensor(shape=[2, -1], data=[1] * 4)), None, ErrorCode.INVALID_INPUT, "non-negative integers"),
        (body(tensor(shape="2x2", data=[1] * 4)), None, ErrorCode.INVALID_INPUT, "non-negative integers"),
        (body(tensor(shape=[True, 2], data=[1] * 2)), None, ErrorCode.INVALID_INPUT, "non-negative integers"),
        (body(tensor()), None, ErrorCode.INVALID_INPUT, "missing 'data'"),
        (body(tensor(data=5)), None, ErrorCode.INVALID_INPUT, "must be a (possibly nested) list"),
        (body(tensor(data=[1, 2, 3])), None, ErrorCode.INVALID_INPUT, "holds 3 values but shape [2, 2] needs 4"),
        (body(tensor(data=[[1, 2], [3]])), None, ErrorCode.INVALID_INPUT, "ragged"),
        (body(tensor(data=[1, "2", 3, 4])), None, ErrorCode.INVALID_INPUT, "FP32 data must be numbers"),
        (body(tensor(data=[1, None, 3, 4])), None, ErrorCode.INVALID_INPUT, "FP32 data must be numbers"),
        (body(tensor(datatype="INT32", data=[1, 2.5, 3, 4])), None, ErrorCode.INVALID_INPUT, "must be integers"),
        (body(tensor(datatype="UINT8", data=[1, 2, 3, 256])), None, ErrorCode.INVALID_INPUT, "out of range"),
        (body(tensor(datatype="INT8", data=[-129, 0, 0, 0])), None, ErrorCode.INVALID_INPUT, "out of range"),
        (body(tensor(datatype="BOOL", data=[1, 0, 1, 0])), None, ErrorCode.INVALID_INPUT, "must be booleans"),
        (body(tensor(datatype="BYTES", data=[1, 2, 3, 4])), None, ErrorCode.INVALID_INPUT, "must be strings"),
        (body(tensor(datatype="BYTES", data=["a"])), None, ErrorCode.INVALID_INPUT, "holds 1 values"),
        (body(tensor(shape=[1] * 17, data=[1])), None, ErrorCode.INVALID_INPUT, "rank 17"),
        (body(tensor(data=[1] * 4), id=7), None, ErrorCode.INVALID_REQUEST, "'id' must be a string"),
        (body(tensor(data=[1] * 4), parameters=[]), None, ErrorCode.INVALID_REQUEST, "'parameters' must be an object"),
        (body(tensor(data=[1] * 4), parameters={"a": {}}), None, ErrorCode.INVALID_REQUEST, "parameters.a"),
        (body(tensor(data=[1] * 4), parameters={"timeout_ms": "1"}), None, ErrorCode.INVALID_REQUEST, "timeout_ms"),
        (body(tensor(data=[1] * 4), parameters={"binary_data_output": 1}), None, ErrorCode.INVALID_REQUEST, "true"),
        (body(tensor(data=[1] * 4), outputs={}), None, ErrorCode.INVALID_REQUEST, "'outputs' must be a list"),
        (body(tensor(data=[1] * 4), outputs=[{}]), None, ErrorCode.INVALID_REQUEST, "outputs[0]"),
        (body(tensor(data=[1] * 4), outputs=[{"name": "y"}] * 2), None, ErrorCode.INVALID_REQUEST, "twice"),
        (
            body(tensor(data=[1] * 4), outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
            None,
            ErrorCode.INVALID_REQUEST,
            "binary_data must be true or false",
        ),
        # binary extension
        (body(tensor(data=[1] * 4)), "abc", ErrorCode.INVALID_REQUEST, "is not an integer"),
        (body(tensor(data=[1] * 4)), "-1", ErrorCode.INVALID_REQUEST, "negative"),
        (body(tensor(data=[1] * 4)), "100000", ErrorCode.INVALID_REQUEST, "past the end"),
        (body(tensor(parameters=_FP32_4)), None, ErrorCode.INVALID_INPUT, "needs the Inference-Header"),
        (*binary({"inputs": [tensor(parameters=_FP32_4)]}, b"\0" * 8), ErrorCode.INVALID_INPUT, "runs past the body"),
        (*binary({"inputs": [tensor(parameters=_FP32_4)]}, b"\0" * 20), ErrorCode.INVALID_REQUEST, "4 bytes of binary"),
        (
            *binary({"inputs": [tensor(parameters={"binary_data_size": 8})]}, b"\0" * 8),
            ErrorCode.INVALID_INPUT,
            "does not fit shape [2, 2] of FP32 (16 bytes)",
        ),
        (
            *binary({"inputs": [tensor(parameters={"binary_data_size": -1})]}),
            ErrorCode.INVALID_INPUT,
            "non-negative integer",
        ),
        (
            *binary({"inputs": [tensor(data=[1] * 4, parameters=_FP32_4)]}, b"\0" * 16),
            ErrorCode.INVALID_INPUT,
            "both 'data' and",
        ),
        (
            *binary({"inputs": [tensor(datatype="BOOL", shape=[2], parameters={"binary_data_size": 2})]}, b"\x00\x02"),
            ErrorCode.INVALID_INPUT,
            "bytes 0 or 1",
        ),
        (
            *binary(
                {"inputs": [tensor(datatype="BYTES", shape=[2], parameters={"binary_data_size": 7})]},
                bytes_elements(b"abc"),
            ),
            ErrorCode.INVALID_INPUT,
            "needs 2 elements",
        ),
        (
            *binary(
                {"inputs": [tensor(datatype="BYTES", shape=[1], parameters={"binary_data_size": 6})]}, b"\x09\0\0\0ab"
            ),
            ErrorCode.INVALID_INPUT,
            "runs past the data",
        ),
    ],
)
def test_malformed_requests(data: bytes, header: str | None, code: ErrorCode, message: str) -> None:
    with pytest.raises(FleetError) as info:
        parse_infer(data, header)
    assert info.value.code is code
    assert message in info.value.message
    assert isinstance(info.value, InvalidRequestError if code is ErrorCode.INVALID_REQUEST else InvalidInputError)


def test_check_outputs() -> None:
    check_outputs(["y", "z"], InferBody(inputs=(), outputs=(OutputRequest("z"),)))
    with pytest.raises(InvalidRequestError, match="unknown output 'q'; the model has \\['y'\\]"):
        check_outputs(["y"], InferBody(inputs=(), outputs=(OutputRequest("q"),)))


# timeouts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body_ms", "header", "expected"),
    [
        (None, None, 30_000.0),  # default
        (250.0, None, 250.0),
        (None, "125.5", 125.5),
        (250.0, "125", 250.0),  # the body parameter wins
        (10_000_000.0, None, 300_000.0),  # capped at the maximum
        (None, "999999999", 300_000.0),
    ],
)
def test_timeout(body_ms: float | None, header: str | None, expected: float) -> None:
    assert parse_timeout_ms(body_ms, header, default_s=30.0, max_s=300.0) == expected


@pytest.mark.parametrize(("body_ms", "header"), [(0.0, None), (-1.0, None), (None, "x"), (None, "nan"), (None, "-3")])
def test_bad_timeout(body_ms: float | None, header: str | None) -> None:
    with pytest.raises(InvalidRequestError):
        parse_timeout_ms(body_ms, header, default_s=30.0, max_s=300.0)


# lanes ---------------------------------------------------------------------------------------------------


def _with_parameters(parameters: dict[str, Any]) -> bytes:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}], "parameters": parameters}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("parameters", "header", "expected"),
    [
        ({}, None, Lane.INTERACTIVE),  # default
        ({}, "bulk", Lane.BULK),
        ({}, " BULK ", Lane.BULK),
        ({"lane": "bulk"}, None, Lane.BULK),
        ({"lane": "interactive"}, "bulk", Lane.INTERACTIVE),  # the body parameter wins
    ],
)
def test_lane(parameters: dict[str, Any], header: str | None, expected: Lane) -> None:
    body = parse_infer(_with_parameters(parameters), None)
    assert "lane" not in body.parameters  # the gateway's own parameter is not forwarded
    assert choose_lane(body.lane, header) is expected


@pytest.mark.parametrize(("parameters", "header"), [({"lane": "urgent"}, None), ({"lane": 1}, None), ({}, "fast")])
def test_bad_lane_is_invalid_request(parameters: dict[str, Any], header: str | None) -> None:
    with pytest.raises(InvalidRequestError, match="lane|Lane") as info:
        choose_lane(parse_infer(_with_parameters(parameters), None).lane, header)
    assert info.value.code is ErrorCode.INVALID_REQUEST


# rendering -----------------------------------------------------------------------------------------------


def _response(*outputs: Tensor) -> InferenceResponse:
    return InferenceResponse(
        "wire-1", "m", "3", outputs=outputs, batch_size=4, queue_ms=1.25, compute_ms=0.5, worker="w-1"
    )


_Y = np.array([[1.5, -2], [0, 3]], dtype="<f2")
_S = np.array([b"ok", "é".encode()], dtype=object)
_B = np.array([True, False])


def test_render_json() -> None:
    rendered = render_infer(
        _response(Tensor.from_numpy("y", _Y), Tensor.from_numpy("s", _S), Tensor.from_numpy("b", _B)),
        InferBody(inputs=()),
        "client-id",
    )
    assert rendered.content_type == "application/json" and rendered.header_length is None
    doc = json.loads(rendered.body)
    assert doc["model_name"] == "m" and doc["model_version"] == "3" and doc["id"] == "client-id"
    assert doc["parameters"] == {"batch_size": 4, "queue_ms": 1.25, "compute_ms": 0.5, "worker": "w-1"}
    assert doc["outputs"] == [
        {"name": "y", "datatype": "FP16", "shape": [2, 2], "data": [1.5, -2.0, 0.0, 3.0]},
        {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ok", "é"]},
        {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
    ]


@pytest.mark.parametrize(
    ("request_body", "binary_names"),
    [
        (InferBody(inputs=(), binary_output=True), ["y", "s"]),
        (InferBody(inputs=(), binary_output=True, outputs=(OutputRequest("y", False), OutputRequest("s"))), ["s"]),
        (InferBody(inputs=(), outputs=(OutputRequest("y", True),)), ["y"]),  # only the requested output
    ],
)
def test_render_binary(request_body: InferBody, binary_names: list[str]) -> None:
    response = _response(Tensor.from_numpy("y", _Y), Tensor.from_numpy("s", _S))
    rendered = render_infer(response, request_body, "id")
    assert rendered.content_type == "application/octet-stream" and rendered.header_length is not None
    doc = json.loads(rendered.body[: rendered.header_length])
    offset = rendered.header_length
    wanted = {o.name for o in request_body.outputs}
    assert [o["name"] for o in doc["outputs"]] == [n for n in ("y", "s") if not wanted or n in wanted]
    for out in doc["outputs"]:
        if out["name"] not in binary_names:
            assert "data" in out
            continue
        size = out["parameters"]["binary_data_size"]
        raw = rendered.body[offset : offset + size]
        offset += size
        back = Tensor(out["name"], out["datatype"], tuple(out["shape"]), raw).to_numpy()
        np.testing.assert_array_equal(back, _Y if out["name"] == "y" else _S)
    assert offset == len(rendered.body)


def _strict_constant(token: str) -> None:
    raise ValueError(f"invalid JSON token {token}")  # what strict parsers do with NaN/Infinity


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8"])
def test_non_finite_outputs_render_as_strict_json_strings(dtype: str) -> None:
    values = np.array([np.nan, np.inf, -np.inf, 1.5], dtype=dtype)
    rendered = render_infer(_response(Tensor.from_numpy("y", values)), InferBody(inputs=()), "id")
    doc = json.loads(rendered.body, parse_constant=_strict_constant)
    data = doc["outputs"][0]["data"]
    assert data == ["NaN", "Infinity", "-Infinity", 1.5]
    np.testing.assert_array_equal(np.array(data, dtype=values.dtype), values)  # what tritonclient's as_numpy does


@pytest.mark.parametrize(("levels", "accepted"), [(32, True), (33, False), (40, False)])
@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_data_nesting_is_limited_to_32_levels(levels: int, accepted: bool, datatype: str) -> None:
    data: Any = ["a" if datatype == "BYTES" else 1.0]
    for _ in range(levels - 1):
        data = [data]
    raw = body(tensor(datatype=datatype, shape=[1], data=data))
    if accepted:
        assert parse_infer(raw).inputs[0].shape == (1,)
    else:
        with pytest.raises(InvalidInputError, match="nested more than 32 levels deep"):
            parse_infer(raw)


def test_a_bytes_element_that_is_not_unicode_text_is_invalid_input() -> None:
    # JSON may escape a lone surrogate ("\udc80"); it has no UTF-8 form, so it cannot become BYTES.
    raw = b'{"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ok", "\\udc80"]}]}'
    with pytest.raises(InvalidInputError, match="element 1 is not Unicode text"):
        parse_infer(raw)


def test_an_input_of_another_datatype_is_refused_before_its_data_is_converted() -> None:
    # Numbers sent as BYTES to an FP32 input: without the model's datatypes the data itself is refused
    # (after looking at every element); with them, the datatype is, before the data is touched.
    raw = body(tensor(datatype="BYTES", shape=[3], data=[1, 2, 3]))
    with pytest.raises(InvalidInputError, match="BYTES data must be strings"):
        parse_infer(raw)
    with pytest.raises(InvalidInputError, match="has datatype BYTES, the model expects FP32"):
        parse_infer(raw, None, {"x": "FP32"})
    strings = body(tensor(datatype="BYTES", shape=[3], data=["a", "b", "c"]))
    assert parse_infer(strings, None, {"other": "FP32"}).inputs[0].datatype == "BYTES"  # names: checked later
