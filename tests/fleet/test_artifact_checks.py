"""Registration refuses, in one line with the fix named, artifacts that cannot serve as declared (no servers)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, ErrorCode, Framework, SchemaError, TensorSpec, parse_spec
from tests.onnxgraphs import external_data_model, zipmap_model
from workers import load_runtime
from workers.errors import ModelExecutionError


def refused(path: Path, **kwargs: object) -> str:
    with pytest.raises(SchemaError) as info:
        build_record("m", "1", path, **kwargs)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert "\n" not in info.value.message
    return info.value.message


def specs(*texts: str) -> tuple[TensorSpec, ...]:
    return tuple(parse_spec(text) for text in texts)


def test_a_corrupt_onnx_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    assert refused(junk).startswith("junk.onnx is not an ONNX model")


def test_onnx_with_external_data_is_refused_alone_with_the_fix_and_registers_as_its_directory(tmp_path: Path) -> None:
    model = external_data_model(tmp_path / "d" / "big.onnx")
    message = refused(model)
    assert "external data files (big.weights)" in message and "register the directory that holds big.onnx" in message
    assert build_record("m", "1", tmp_path / "d").layout == "directory"
    (tmp_path / "d" / "big.weights").unlink()
    assert "external data file 'big.weights' is not a file inside the artifact directory" in refused(tmp_path / "d")


def test_zipmap_outputs_are_refused_with_the_fix(tmp_path: Path) -> None:
    message = refused(zipmap_model(tmp_path / "clf.onnx"))
    assert "output 'probabilities' is a sequence, not a tensor" in message
    assert "options={id(clf): {'zipmap': False}}" in message


@pytest.mark.parametrize(
    ("inputs", "outputs", "problem"),
    [
        (("z:FP32:-1,16",), (), "--input 'z': the ONNX file has no input of that name (it has ['x'])"),
        (("x:FP64:-1,16",), (), "--input x:FP64[-1, 16]: the ONNX file says x:FP32[-1, 16]"),
        (("x:FP32:-1,15",), (), "--input x:FP32[-1, 15]: the ONNX file fixes dimension 1 at 16"),
        (("x:FP32:-1,-1",), (), "--input x:FP32[-1, -1]: the ONNX file fixes dimension 1 at 16"),
        (("x:FP32:-1",), (), "(rank differs)"),
        ((), ("y:BYTES:-1,4",), "--output y:BYTES[-1, 4]: the ONNX file says y:FP32[-1, 4]"),
        ((), ("p:FP32:-1,4",), "--output 'p': the ONNX file has no output of that name (it has ['y'])"),
    ],
)
def test_specs_that_contradict_the_onnx_file_are_refused(
    tmp_path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...], problem: str
) -> None:
    message = refused(tiny_mlp(tmp_path / "tiny.onnx"), inputs=specs(*inputs), outputs=specs(*outputs))
    assert problem in message


def test_specs_that_agree_with_the_onnx_file_are_kept(tmp_path: Path) -> None:
    path = tiny_mlp(tmp_path / "tiny.onnx")
    record = build_record("m", "1", path, inputs=specs("x:FP32:-1,16"), outputs=specs("y:FP64:-1,4"))
    assert [s.describe() for s in record.outputs] == ["y:FP64[-1, 4]"]  # a numeric cast is allowed


def test_a_fixed_batch_dimension_needs_max_batch_size_1(tmp_path: Path) -> None:
    import onnx

    path = tiny_mlp(tmp_path / "one.onnx")
    model = onnx.load(str(path))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    message = refused(path)
    assert "x:FP32[1, 16] has a fixed batch dimension: register with --max-batch-size 1" in message
    message = refused(path, inputs=specs("x:FP32:-1,16"))
    assert "the ONNX file fixes dimension 0 (the batch) at 1; register with --max-batch-size 1" in message
    record = build_record("m", "1", path, batching=BatchingConfig(max_batch_size=1))
    assert record.inputs[0].shape == (1, 16)


@pytest.fixture
def torch_paths(tmp_path: Path) -> tuple[Path, Path]:
    """A two_heads state dict (``weights.pth``) and a TorchScript archive of a Linear(4, 2) (``model.pt``)."""
    torch = pytest.importorskip("torch")
    from tests.workers.torchmodels import two_heads

    state = tmp_path / "weights.pth"
    torch.save(two_heads().state_dict(), str(state))
    archive = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(archive))
    return state, archive


TWO_HEADS = "tests.workers.torchmodels:two_heads"


def test_a_state_dict_registered_as_torchscript_is_refused_with_the_fix(torch_paths: tuple[Path, Path]) -> None:
    state, _ = torch_paths
    message = refused(state, inputs=specs("x:FP32:-1,4"), outputs=specs("y:FP32:-1,3"))
    assert message.startswith("weights.pth is a torch checkpoint") and "--framework torch --factory" in message


def test_a_torchscript_archive_registered_as_a_checkpoint_is_refused(torch_paths: tuple[Path, Path]) -> None:
    _, archive = torch_paths
    message = refused(archive, factory=TWO_HEADS, inputs=specs("x:FP32:-1,4"), outputs=specs("y:FP32:-1,2"))
    assert "is a TorchScript archive, not a checkpoint" in message and "--framework torchscript" in message


@pytest.mark.parametrize(
    ("outputs", "problem"),
    [
        (("proj:FP32:-1,5", "total:FP32:-1,1"), "output 'proj' has shape [1, 3], the signature declares [-1, 5]"),
        (("proj:FP32:-1,3",), "the model returned 2 output(s), its signature declares 1 ['proj']"),
        (("proj:FP32:-1,3", "total:FP32:-1,1", "extra:FP32:-1"), "its signature declares 3"),
    ],
)
def test_torch_outputs_are_checked_against_the_signature_at_registration(
    torch_paths: tuple[Path, Path], outputs: tuple[str, ...], problem: str
) -> None:
    state, _ = torch_paths
    message = refused(state, factory=TWO_HEADS, inputs=specs("x:FP32:-1,4"), outputs=specs(*outputs), load=True)
    assert message.startswith("weights.pth: a dummy batch failed:") and problem in message


def test_torchscript_outputs_are_checked_and_a_fitting_model_registers(torch_paths: tuple[Path, Path]) -> None:
    _, archive = torch_paths
    message = refused(archive, inputs=specs("x:FP32:-1,4"), outputs=specs("y:FP32:-1,3"), load=True)
    assert "output 'y' has shape [1, 2], the signature declares [-1, 3]" in message
    record = build_record("m", "1", archive, inputs=specs("x:FP32:-1,4"), outputs=specs("y:FP32:-1,2"), load=True)
    assert record.framework is Framework.TORCHSCRIPT


def test_a_torch_factory_that_does_not_import_is_refused_when_loading(torch_paths: tuple[Path, Path]) -> None:
    state, _ = torch_paths
    message = refused(
        state, factory="no_such_module_here:build", inputs=specs("x:FP32:-1,4"), outputs=specs("y:FP32:-1,3"), load=True
    )
    assert "no_such_module_here" in message


def test_bytes_on_a_torch_model_is_refused(torch_paths: tuple[Path, Path]) -> None:
    state, _ = torch_paths
    message = refused(state, factory=TWO_HEADS, inputs=specs("x:BYTES:-1,4"), outputs=specs("y:FP32:-1,3"))
    assert "torch models take and return numeric tensors only" in message


def test_a_torch_output_off_the_signature_is_a_model_error_when_served(torch_paths: tuple[Path, Path]) -> None:
    state, _ = torch_paths  # registered without the load check: the worker still refuses to answer wrongly
    record = build_record(
        "m", "1", state, factory=TWO_HEADS, inputs=specs("x:FP32:-1,4"),
        outputs=specs("proj:FP32:-1,5", "total:FP32:-1,1"), batching=BatchingConfig(max_batch_size=4),
    )  # fmt: skip
    runtime = load_runtime(record, "cpu")
    with pytest.raises(ModelExecutionError, match=r"output 'proj' has shape \[2, 3\], the signature declares") as info:
        runtime.predict({"x": np.ones((2, 4), np.float32)})
    assert info.value.code is ErrorCode.MODEL_ERROR
