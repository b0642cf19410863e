"""How the OIP codec reads and writes JSON with orjson: the language it accepts is unchanged (what orjson
refuses the standard library reads), integers beyond 64 bits read as floats, numeric data is written
straight from numpy, and a non-finite float never turns into ``null``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.errors import InvalidInputError, InvalidRequestError
from gateway.protocol import parse_infer
from schemas import InferenceRequest, InferenceResponse, ReplyAddress, ReplyKind, Tensor
from schemas.oip import InferBody, decode_request, decode_response, encode_request, encode_response
from schemas.oip.body import dumps
from schemas.oip.response import response_document


def _body(data: str, datatype: str = "FP32", shape: str = "[3]", extra: str = "") -> bytes:
    return f'{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":{shape},"data":{data}}}]{extra}}}'.encode()


def _response(array: np.ndarray[Any, Any]) -> InferenceResponse:
    return InferenceResponse("w", "m", "1", outputs=(Tensor.from_numpy("y", array),), batch_size=1, worker="w")


def test_bare_non_finite_tokens_in_a_request_still_read() -> None:
    # orjson refuses NaN/Infinity; the standard library reads them, as the gateway always did.
    (tensor,) = parse_infer(_body("[NaN, Infinity, -Infinity]")).inputs
    np.testing.assert_array_equal(tensor.to_numpy(), np.array([np.nan, np.inf, -np.inf], dtype=np.float32))
    (tensor,) = parse_infer(_body("[1e400]", shape="[1]")).inputs  # beyond the double range: orjson refuses it
    assert tensor.to_numpy().tolist() == [np.inf]


@pytest.mark.parametrize("nan", [False, True], ids=["orjson", "stdlib"])
@pytest.mark.parametrize(
    ("datatype", "literal"),
    [
        ("INT64", "18446744073709551616"),
        ("INT64", "-9223372036854775809"),
        ("UINT64", "18446744073709551616"),
        ("INT32", "1180591620717411303424"),
    ],
)
def test_an_integer_beyond_64_bits_is_out_of_range_for_every_integer_datatype(
    datatype: str, literal: str, nan: bool
) -> None:
    # orjson reads such a literal as a float; the standard library (a body with NaN in it) is told to do the same.
    extra = ',"parameters":{"f":NaN}' if nan else ""
    with pytest.raises(InvalidInputError, match=f"values out of range for {datatype}"):
        parse_infer(_body(f"[{literal}]", datatype, "[1]", extra))


def test_the_64_bit_edges_are_exact_integers() -> None:
    (unsigned,) = parse_infer(_body("[18446744073709551615]", "UINT64", "[1]")).inputs
    assert unsigned.to_numpy().tolist() == [2**64 - 1]
    (signed,) = parse_infer(_body("[-9223372036854775808]", "INT64", "[1]")).inputs
    assert signed.to_numpy().tolist() == [-(2**63)]


@pytest.mark.parametrize("nan", [False, True], ids=["orjson", "stdlib"])
def test_a_parameter_beyond_64_bits_reads_as_a_float(nan: bool) -> None:
    # It has to: the request travels as msgpack, which has no integer that large (the gateway answered 500).
    params = '"n":1180591620717411303424' + (',"f":NaN' if nan else "")
    body = parse_infer(_body("[1]", shape="[1]", extra=f',"parameters":{{{params}}}'))
    assert body.parameters["n"] == 2.0**70 and isinstance(body.parameters["n"], float)
    reply = ReplyAddress(ReplyKind.STREAM, "s")
    InferenceRequest("r", "m", "1", inputs=body.inputs, reply=reply, parameters=body.parameters).to_bytes()
    (tensor,) = parse_infer(_body("[1180591620717411303424]", shape="[1]")).inputs  # FP32 data: a number
    assert tensor.to_numpy().tolist() == [np.float32(2.0**70)]


def test_a_lone_surrogate_escape_reads_and_is_refused_as_bytes() -> None:
    raw = b'{"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["\\udc80"]}]}'
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)  # orjson refuses it: the standard library reads it and the codec says what is wrong
    with pytest.raises(InvalidInputError, match="element 0 is not Unicode text"):
        parse_infer(raw)


@pytest.mark.parametrize(
    "raw",
    [b"{nope", b"\xff\xfe\x00", b"[1, 2]", b"[" * 2000 + b"]" * 2000],
    ids=["broken", "not-utf8", "not-an-object", "deep"],
)
def test_an_invalid_body_says_what_the_standard_library_says(raw: bytes) -> None:
    try:
        json.loads(raw)
        expected = "must be a JSON object"
    except (ValueError, RecursionError) as exc:
        expected = f"not valid JSON ({exc})"
    with pytest.raises(InvalidRequestError) as info:
        parse_infer(raw)
    assert expected in info.value.message


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8"])
def test_a_non_finite_output_is_spelled_never_null(dtype: str) -> None:
    array = np.array([1.5, np.nan, np.inf, -np.inf], dtype=dtype)
    rendered = encode_response(_response(array), InferBody(inputs=()), "i")
    assert b"null" not in rendered.body
    assert orjson.loads(rendered.body)["outputs"][0]["data"] == [1.5, "NaN", "Infinity", "-Infinity"]


def test_float32_outputs_are_written_in_their_shortest_form_and_read_back_exactly() -> None:
    array = np.array([0.1, 1 / 3, -2.5e-8, 3.4e38], dtype=np.float32)
    rendered = encode_response(_response(array), InferBody(inputs=()), "i")
    data = orjson.loads(rendered.body)["outputs"][0]["data"]
    assert data[0] == 0.1  # not 0.10000000149011612, the float64 spelling of the same float32
    _, outputs = decode_response(rendered.body, None)
    np.testing.assert_array_equal(outputs["y"], array)


def test_a_request_with_non_finite_floats_carries_the_tokens_the_gateway_reads() -> None:
    array = np.array([np.nan, 1.0], dtype=np.float32)
    rendered = encode_request({"x": array}, binary=False, parameters={"f": float("inf"), "n": 2**70})
    assert b"NaN" in rendered.body and b"null" not in rendered.body
    body = decode_request(rendered.body)
    np.testing.assert_array_equal(body.inputs[0].to_numpy(), array)
    assert body.parameters == {"f": float("inf"), "n": 2.0**70}


def test_a_request_parameter_beyond_64_bits_is_written_by_the_standard_library() -> None:
    rendered = encode_request({"x": np.ones(2, np.float32)}, binary=False, parameters={"n": 2**70})
    assert b"1180591620717411303424" in rendered.body  # orjson refuses to write it


def test_a_job_result_is_built_once_and_matches_the_sync_answer() -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3)
    sync = encode_response(_response(array), InferBody(inputs=()), "i")
    for_orjson = response_document(_response(array), InferBody(inputs=()), "i", [])
    assert isinstance(for_orjson["outputs"][0]["data"], np.ndarray)  # written by orjson straight from numpy
    assert dumps(for_orjson) == sync.body
    plain = response_document(_response(array), InferBody(inputs=()), "i")  # e.g. a webhook's document
    assert json.loads(json.dumps(plain)) == orjson.loads(sync.body)


def test_orjson_and_uvloop_are_in_the_default_install() -> None:
    import tomllib

    from schemas import eventloop

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    base = project["dependencies"]
    assert any(r.startswith("orjson") for r in base) and any(r.startswith("uvloop") for r in base)
    assert any(r.startswith("uvloop") for r in project["optional-dependencies"]["speed"])  # the old extra still works
    assert eventloop.loop_factory() is not None  # every service runs on uvloop unless FLEET_EVENT_LOOP=asyncio
