"""Example inputs generated from a signature and the check of outputs against it (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.models.verify import check_outputs, compare_outputs, example_array, example_inputs
from schemas import Framework, ModelRecord, Tensor, TensorSpec


@pytest.mark.parametrize(
    ("spec", "shape", "dtype"),
    [
        (TensorSpec("x", "FP32", (-1, 4)), (1, 4), np.float32),
        (TensorSpec("x", "FP16", (-1, -1, 3)), (1, 1, 3), np.float16),
        (TensorSpec("x", "INT64", (2, -1)), (2, 1), np.int64),
        (TensorSpec("x", "UINT8", (-1, 28, 28)), (1, 28, 28), np.uint8),
        (TensorSpec("x", "BOOL", (-1,)), (1,), np.bool_),
        (TensorSpec("x", "BYTES", (-1, 2)), (1, 2), np.object_),
        (TensorSpec("x", "FP64", ()), (), np.float64),
    ],
)
def test_example_array_fits_the_spec(spec: TensorSpec, shape: tuple[int, ...], dtype: type) -> None:
    array = example_array(spec)
    assert array.shape == shape
    assert array.dtype == np.dtype(dtype)
    assert spec.matches(array.shape)
    assert np.array_equal(array, example_array(spec))  # deterministic


def record(**kwargs: object) -> ModelRecord:
    fields: dict[str, object] = {
        "name": "m",
        "version": "1",
        "framework": Framework.ONNX,
        "artifact": "/m.onnx",
        "sha256": "0" * 64,
        "inputs": (TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "INT32", (-1,))),
        "outputs": (TensorSpec("y", "FP32", (-1, 2)),),
    }
    fields.update(kwargs)
    return ModelRecord(**fields)  # type: ignore[arg-type]


def test_example_inputs_from_signature_and_from_stored_example() -> None:
    generated = example_inputs(record())
    assert {k: v.shape for k, v in generated.items()} == {"a": (1, 3), "b": (1,)}
    stored = np.arange(6, dtype=np.float32).reshape(2, 3)
    with_example = record(example=(Tensor.from_numpy("a", stored), Tensor.from_numpy("b", np.array([1, 2], np.int32))))
    assert example_inputs(with_example)["a"].tolist() == stored.tolist()


SPECS = (TensorSpec("y", "FP32", (-1, 2)), TensorSpec("z", "INT64", (-1,)))


@pytest.mark.parametrize(
    ("outputs", "problem"),
    [
        ({"y": np.zeros((1, 2), np.float32), "z": np.zeros(1, np.int64)}, None),
        ({"y": np.zeros((5, 2), np.float32), "z": np.zeros(5, np.int64)}, None),
        ({"y": np.zeros((1, 2), np.float32)}, "missing output 'z'"),
        ({"y": np.zeros((1, 2), np.float32), "z": np.zeros(1, np.int64), "w": np.zeros(1)}, "unexpected output 'w'"),
        ({"y": np.zeros((1, 2), np.float64), "z": np.zeros(1, np.int64)}, "is FP64, the signature says FP32"),
        ({"y": np.zeros((1, 3), np.float32), "z": np.zeros(1, np.int64)}, "has shape [1, 3]"),
        ({"y": np.zeros((2,), np.float32), "z": np.zeros(1, np.int64)}, "has shape [2]"),
    ],
)
def test_check_outputs(outputs: dict[str, np.ndarray], problem: str | None) -> None:
    problems = check_outputs(SPECS, outputs)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_compare_outputs_finds_wrong_text_and_numbers() -> None:
    specs = (TensorSpec("echo", "BYTES", (-1,)), TensorSpec("p", "FP32", (-1,)))
    expected = {"echo": np.array(["abc", "é"], dtype=object), "p": np.array([0.5, 1.0], np.float32)}
    right = {"echo": np.array([b"abc", "é".encode()], dtype=object), "p": np.array([0.5, 1.0 + 1e-7], np.float32)}
    assert compare_outputs(right, expected, specs) == []
    wrong = {"echo": np.array([b"b'abc'", "é".encode()], dtype=object), "p": np.array([0.5, 0.9], np.float32)}
    assert compare_outputs(wrong, expected, specs) == [
        "output 'echo' differs from the local run at element 0: b\"b'abc'\", expected b'abc'",
        "output 'p' differs from the local run at [1]: 0.9, expected 1.0",
    ]
