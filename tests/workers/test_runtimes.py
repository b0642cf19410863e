"""Loading and running models: ONNX Runtime, TorchScript, torch checkpoints, integrity and device fallback."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, ErrorCode, Framework, ModelRecord, Tensor, TensorSpec
from schemas.tensors import encode_bytes_elements
from tests.onnxgraphs import string_model, words
from workers import ModelLoadError, load_runtime
from workers.errors import ModelExecutionError
from workers.runtimes import bytes_input_problems
from workers.runtimes.base import cast_outputs


@pytest.fixture
def tiny(tmp_path: Path) -> ModelRecord:
    return build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"))


def test_onnx_runtime_matches_onnxruntime(tiny: ModelRecord) -> None:
    runtime = load_runtime(tiny, "cpu")
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    outputs = runtime.predict({"x": x})
    expected = ort.InferenceSession(tiny.artifact, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert set(outputs) == {"y"} and outputs["y"].dtype == np.float32
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-6)
    assert runtime.device == "cpu" and runtime.providers[0] == "CPUExecutionProvider"
    runtime.unload()
    with pytest.raises(ModelExecutionError):
        runtime.predict({"x": x})


def test_onnx_failure_is_a_model_error(tiny: ModelRecord) -> None:
    runtime = load_runtime(tiny, "cpu")
    with pytest.raises(ModelExecutionError, match="ONNX Runtime"):
        runtime.predict({"x": np.zeros((1, 15), dtype=np.float32)})


def test_sha256_mismatch_is_model_load_failed(tiny: ModelRecord) -> None:
    forged = dataclasses.replace(tiny, sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="sha256") as info:
        load_runtime(forged, "cpu")
    assert info.value.code is ErrorCode.MODEL_LOAD_FAILED


def test_missing_or_corrupt_artifact_is_model_load_failed(tiny: ModelRecord, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_runtime(dataclasses.replace(tiny, artifact=str(tmp_path / "nope.onnx")), "cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    from schemas import sha256_file

    with pytest.raises(ModelLoadError, match="cannot load"):
        load_runtime(dataclasses.replace(tiny, artifact=str(junk), sha256=sha256_file(junk)), "cpu")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_cuda_requested_on_cpu_box_falls_back_with_warning(tiny: ModelRecord, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fleet.workers"):
        runtime = load_runtime(tiny, "cuda")
    assert runtime.device == "cpu" and runtime.providers[0] == "CPUExecutionProvider"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "CUDA" in warnings[0].getMessage() and "CPU" in warnings[0].getMessage()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_auto_device_falls_back_silently(tiny: ModelRecord, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fleet.workers"):
        runtime = load_runtime(tiny, "auto")
    assert runtime.device == "cpu"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_torchscript_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU())
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; old archives must still load
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    record = build_record(
        "ts",
        "1",
        path,
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP64", (-1, 2)),),  # declared FP64: the output is cast
    )
    assert record.framework is Framework.TORCHSCRIPT
    with caplog.at_level(logging.WARNING, logger="fleet.workers"):
        runtime = load_runtime(record, "cuda" if not torch.cuda.is_available() else "cpu")
    assert runtime.device == "cpu"
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    x.setflags(write=False)  # wire tensors are read-only buffers
    outputs = runtime.predict({"x": x})
    with torch.inference_mode():
        expected = module(torch.from_numpy(x.copy())).numpy()
    assert outputs["y"].dtype == np.float64
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-6)


def test_torch_checkpoint_with_factory(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tests.workers.torchmodels import two_heads

    module = two_heads()
    path = tmp_path / "weights.pt"
    torch.save(module.state_dict(), str(path))
    record = build_record(
        "th",
        "1",
        path,
        factory="tests.workers.torchmodels:two_heads",
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("proj", "FP32", (-1, 3)), TensorSpec("total", "FP32", (-1, 1))),
        batching=BatchingConfig(max_batch_size=8),
    )
    assert record.framework is Framework.TORCH
    runtime = load_runtime(record, "cpu")
    x = np.ones((2, 4), dtype=np.float32)
    outputs = runtime.predict({"x": x})
    with torch.inference_mode():
        proj, total = module(torch.from_numpy(x))
    np.testing.assert_allclose(outputs["proj"], proj.numpy(), rtol=1e-6)
    np.testing.assert_allclose(outputs["total"], total.numpy())


def test_torch_factory_that_does_not_import_is_model_load_failed(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pt"
    torch.save({}, str(path))
    record = build_record(
        "th",
        "1",
        path,
        factory="no_such_module_here:build",
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP32", (-1, 3)),),
    )
    with pytest.raises(ModelLoadError, match="no_such_module_here"):
        load_runtime(record, "cpu")


def test_onnx_string_model_sees_text_and_answers_bytes(tmp_path: Path) -> None:
    record = build_record("words", "1", string_model(tmp_path / "words.onnx"))
    assert [s.describe() for s in record.inputs] == ["s:BYTES[-1, 1]"]
    runtime = load_runtime(record, "cpu")
    assert runtime.takes_text
    outputs = runtime.predict({"s": words(b"abc", b"x", "é".encode())})
    assert outputs["eq"].ravel().tolist() == [True, False, False]
    echo = Tensor.from_numpy("echo", outputs["echo"])
    assert echo.datatype == "BYTES" and echo.to_numpy().ravel().tolist() == [b"abc", b"x", "é".encode()]


def test_bytes_inputs_must_be_utf8_for_onnx_only(tmp_path: Path) -> None:
    onnx_record = build_record("words", "1", string_model(tmp_path / "words.onnx"))
    good = Tensor("s", "BYTES", (2, 1), encode_bytes_elements([b"abc", "é".encode()]))
    bad = Tensor("s", "BYTES", (2, 1), encode_bytes_elements([b"abc", b"\xff\xfe"]))
    torn = Tensor("s", "BYTES", (2, 1), encode_bytes_elements([b"abc"]))
    problems = bytes_input_problems(onnx_record, [(good,), (bad,), (torn,)])
    assert problems[0] is None
    assert problems[1] is not None and problems[1].startswith("input 's': element 1 is not UTF-8 text")
    assert problems[2] is not None and problems[2].startswith("input 's':") and "length prefix" in problems[2]
    # A runtime that takes bytes keeps them raw: only the element structure is checked.
    torch_record = dataclasses.replace(onnx_record, framework=Framework.TORCHSCRIPT)
    assert bytes_input_problems(torch_record, [(bad,), (torn,)])[0] is None
    assert bytes_input_problems(torch_record, [(torn,)])[0] is not None


@pytest.mark.parametrize(
    ("produced", "problem"),
    [
        ({"y": np.zeros((2, 5), np.float32)}, r"output 'y' has shape \[2, 5\], the signature declares \[-1, 4\]"),
        ({"y": np.zeros((2,), np.float32)}, r"output 'y' has shape \[2\]"),
        ({"y": np.array([["a"] * 4] * 2, dtype=object)}, r"output 'y' holds strings or objects, the signature"),
    ],
)
def test_outputs_that_do_not_fit_the_signature_are_model_errors(
    tiny: ModelRecord, produced: dict[str, np.ndarray], problem: str
) -> None:
    with pytest.raises(ModelExecutionError, match=problem) as info:
        cast_outputs(tiny, produced)
    assert info.value.code is ErrorCode.MODEL_ERROR


def test_numbers_where_bytes_are_declared_are_a_model_error(tmp_path: Path) -> None:
    record = build_record("words", "1", string_model(tmp_path / "words.onnx"))
    with pytest.raises(ModelExecutionError, match="output 'echo' holds float32 numbers, the signature declares BYTES"):
        cast_outputs(record, {"eq": np.ones((1, 1), bool), "echo": np.zeros((1, 1), np.float32)})
