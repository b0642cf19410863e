"""Tensor wire form: numpy round trips, BYTES framing and bounds."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import ErrorCode, SchemaError, Tensor, TensorSpec, check_inputs, parse_spec
from schemas.constants import MAX_TENSOR_ELEMENTS


@pytest.mark.parametrize(
    ("array", "datatype"),
    [
        (np.array([[1.5, 2.5]], dtype=np.float32), "FP32"),
        (np.array([1, 2, 3], dtype=np.int64), "INT64"),
        (np.array([True, False]), "BOOL"),
        (np.array([1.0], dtype=np.float16), "FP16"),
        (np.array([1, 255], dtype=np.uint8), "UINT8"),
        (np.array([[1.0]], dtype=">f8"), "FP64"),  # big-endian input is converted
    ],
)
def test_numeric_round_trip(array: np.ndarray, datatype: str) -> None:
    tensor = Tensor.from_numpy("t", array)
    assert tensor.datatype == datatype
    back = tensor.to_numpy()
    np.testing.assert_array_equal(back, array)
    assert back.dtype.byteorder in ("<", "=", "|")


def test_bytes_round_trip() -> None:
    array = np.array([b"a", b"", b"hello"], dtype=object).reshape(3, 1)
    tensor = Tensor.from_numpy("s", array)
    assert tensor.data[:4] == b"\x01\x00\x00\x00"
    assert tensor.to_numpy().tolist() == array.tolist()


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [(b"\x05\x00\x00\x00ab", 1, "runs past"), (b"\x01\x00", 1, "length prefix"), (b"\x00\x00\x00\x00x", 1, "trailing")],
)
def test_bad_bytes_framing(data: bytes, count: int, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        Tensor("s", "BYTES", (count,), data).to_numpy()


def test_data_length_must_match_shape() -> None:
    with pytest.raises(SchemaError, match="needs 16") as info:
        Tensor("x", "FP32", (2, 2), b"\0" * 12)
    assert info.value.code is ErrorCode.INVALID_INPUT


def test_too_many_elements_is_payload_too_large() -> None:
    with pytest.raises(SchemaError) as info:
        Tensor("x", "BYTES", (MAX_TENSOR_ELEMENTS + 1,), b"")
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE


@pytest.mark.parametrize("shape", [(-1,), (1.5,), (True,)])
def test_bad_shapes(shape: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(SchemaError):
        Tensor("x", "FP32", shape, b"")


SPECS = (TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "INT64", (-1,)))


def _t(name: str, datatype: str, shape: tuple[int, ...]) -> Tensor:
    from schemas.tensors import NUMPY_DTYPES

    return Tensor(name, datatype, shape, b"\0" * (int(np.prod(shape)) * NUMPY_DTYPES[datatype].itemsize))


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ((_t("a", "FP32", (2, 4)),), "missing input"),
        ((_t("a", "FP32", (2, 4)), _t("b", "INT64", (2,)), _t("c", "FP32", (1,))), "unexpected input 'c'"),
        ((_t("a", "FP64", (2, 4)), _t("b", "INT64", (2,))), "datatype FP64"),
        ((_t("a", "FP32", (2, 5)), _t("b", "INT64", (2,))), r"shape \[2, 5\]"),
        ((_t("a", "FP32", (2, 4)), _t("b", "INT64", (3,))), "batch dimension"),
        ((_t("a", "FP32", (2, 4)), _t("a", "FP32", (2, 4))), "given twice"),
    ],
)
def test_check_inputs_rejects(tensors: tuple[Tensor, ...], message: str) -> None:
    with pytest.raises(SchemaError, match=message) as info:
        check_inputs(SPECS, tensors)
    assert info.value.code is ErrorCode.INVALID_INPUT


def test_check_inputs_accepts() -> None:
    check_inputs(SPECS, (_t("b", "INT64", (3,)), _t("a", "FP32", (3, 4))))


def test_parse_spec() -> None:
    assert parse_spec("x:fp32:-1,4") == TensorSpec("x", "FP32", (-1, 4))
    with pytest.raises(SchemaError):
        parse_spec("x:FP32")
