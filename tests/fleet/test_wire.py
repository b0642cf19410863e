"""Pure OIP v2 body encoding and decoding (JSON and the binary extension)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fleet.client.wire import HEADER_LENGTH, decode_response, encode_request
from schemas import SchemaError

ARRAYS = [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.array([[1.5, -2.25]], dtype=np.float64),
    np.array([0.5, 1.0], dtype=np.float16),
    np.array([[1, -2], [3, 4]], dtype=np.int64),
    np.array([7, 8, 9], dtype=np.uint8),
    np.array([True, False, True]),
    np.array([b"a", b"", b"hello"], dtype=object),
    np.zeros((0, 4), dtype=np.float32),
]


def as_response(body: bytes, headers: dict[str, str]) -> tuple[bytes, int | None]:
    """Turn an encoded request into the response a gateway would write (inputs renamed outputs)."""
    length = int(headers[HEADER_LENGTH]) if HEADER_LENGTH in headers else len(body)
    meta = json.loads(body[:length])
    meta["outputs"] = meta.pop("inputs")
    meta.update(model_name="m", model_version="1")
    header = json.dumps(meta).encode()
    return header + body[length:], len(header) if HEADER_LENGTH in headers else None


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_round_trip(array: np.ndarray, binary: bool) -> None:
    body, headers = encode_request({"t": array}, binary=binary)
    raw, length = as_response(body, headers)
    meta, outputs = decode_response(raw, length)
    assert meta["model_version"] == "1"
    got = outputs["t"]
    assert got.shape == array.shape
    assert got.dtype == array.dtype
    assert got.tolist() == array.tolist()


def test_binary_request_layout() -> None:
    x = np.ones((1, 2), dtype=np.float32)
    s = np.array([b"xy"], dtype=object)
    body, headers = encode_request({"x": x, "s": s}, outputs=["y"], request_id="r1")
    length = int(headers[HEADER_LENGTH])
    meta = json.loads(body[:length])
    assert headers["Content-Type"] == "application/octet-stream"
    assert meta["id"] == "r1"
    assert meta["parameters"] == {"binary_data_output": True}
    assert meta["outputs"] == [{"name": "y", "parameters": {"binary_data": True}}]
    assert [i["parameters"]["binary_data_size"] for i in meta["inputs"]] == [8, 6]
    assert body[length:] == x.tobytes() + b"\x02\x00\x00\x00xy"


def test_json_request_has_flat_data_and_no_binary_parameters() -> None:
    body, headers = encode_request({"x": np.array([[1, 2], [3, 4]], dtype=np.int32)}, binary=False, outputs=["y"])
    assert headers == {"Content-Type": "application/json"}
    doc = json.loads(body)
    assert doc == {
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "y"}],
    }


def test_nested_json_output_data() -> None:
    raw = json.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]})
    _, outputs = decode_response(raw.encode(), None)
    assert outputs["y"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("body", "length"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"outputs": [{"name": "y"}]}', None),
        (
            b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}',
            None,
        ),
        (b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}', None),
        (b"{}", 99),
    ],
    ids=["not-json", "not-object", "no-datatype", "binary-past-end", "data-shape-mismatch", "header-past-end"],
)
def test_malformed_responses_raise_schema_error(body: bytes, length: int | None) -> None:
    with pytest.raises(SchemaError):
        decode_response(body, length)
