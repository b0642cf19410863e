"""Loading and running models: ONNX Runtime, TorchScript, torch checkpoints, integrity and device fallback."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fleet.artifacts import build_record
from fleet.modelgen import tiny_mlp
from schemas import BatchingConfig, ErrorCode, Framework, ModelRecord, TensorSpec
from workers import ModelLoadError, load_runtime
from workers.errors import ModelExecutionError


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
