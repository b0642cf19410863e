"""Registration of the frameworks beyond ONNX (pure: no servers): the framework and signature inferred from the
artifact, one-line refusals naming the flag that supplies what could not be, skops' trusted types."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fleet.models.artifacts import build_record
from schemas import BatchingConfig, Framework, ModelRecord, SchemaError
from schemas.codec import pack, unpack_envelope
from tests import anymodels
from workers.errors import ModelLoadError
from workers.runtimes import load_runtime


def refused(path: Path, **kwargs: object) -> str:
    with pytest.raises(SchemaError) as info:
        build_record("m", "1", path, load=True, **kwargs)  # type: ignore[arg-type]
    message = info.value.message
    assert "\n" not in message
    return message


def test_a_skops_file_with_an_untrusted_type_is_refused_with_the_types_and_the_flag(tmp_path: Path) -> None:
    path, _ = anymodels.sklearn_model(tmp_path / "pipe.skops", untrusted=True)
    message = refused(path)
    assert "holds types skops does not trust by default: ['tests.anymodels.double']" in message
    assert "register with --trust tests.anymodels.double" in message


def test_trusted_types_are_stored_and_used_by_the_loader(tmp_path: Path) -> None:
    path, model = anymodels.sklearn_model(tmp_path / "pipe.skops", untrusted=True)
    record = build_record("m", "1", path, load=True, trusted_types=("tests.anymodels.double",))
    assert record.framework is Framework.SKLEARN and record.trusted_types == ("tests.anymodels.double",)
    assert ModelRecord.from_bytes(record.to_bytes()).trusted_types == record.trusted_types
    x = anymodels.rows(3, seed=5)
    runtime = load_runtime(record, "cpu")
    assert runtime.predict({"features": x})["label"].tolist() == model.predict(x).tolist()
    # A record whose list lacks the type (the loader gets nothing else): skops refuses, nothing is built.
    with pytest.raises(ModelLoadError, match="UntrustedTypesFoundException"):
        load_runtime(dataclasses.replace(record, trusted_types=()), "cpu")


def test_a_record_written_before_trusted_types_still_decodes(tmp_path: Path) -> None:
    record = build_record("m", "1", anymodels.xgboost_model(tmp_path / "b.json")[0])
    old = unpack_envelope(record.to_bytes(), "model record")
    del old["trusted_types"]
    assert ModelRecord.from_bytes(pack(old)) == record


def test_the_framework_and_signature_are_inferred_from_the_model(tmp_path: Path) -> None:
    record = build_record("m", "1", anymodels.lightgbm_model(tmp_path / "model.txt")[0], load=True)
    assert record.framework is Framework.LIGHTGBM
    assert [s.describe() for s in record.inputs] == ["features:FP32[-1, 4]"]
    assert [s.describe() for s in record.outputs] == ["label:INT64[-1]", "probabilities:FP64[-1, 3]"]


def test_what_cannot_be_inferred_is_named_with_its_flag(tmp_path: Path) -> None:
    unknown = tmp_path / "model.bin"
    unknown.write_bytes(b"\x00 not a model")
    assert refused(unknown).startswith("could not infer the framework of model.bin")
    assert refused(unknown).endswith("supply --framework")
    weights, _, _ = anymodels.torch_models(tmp_path)
    assert "is a safetensors state dict: supply --framework torch --factory module:function" in refused(weights)
    message = refused(weights, factory="tests.anymodels:affine")
    assert message.startswith("could not infer the inputs and outputs of this torch model")
    assert message.endswith("supply --input and --output NAME:DATATYPE:DIMS")


def test_a_tabular_output_must_name_what_it_answers(tmp_path: Path) -> None:
    path, _ = anymodels.xgboost_model(tmp_path / "b.ubj")
    message = refused(path, inputs=(anymodels.spec("features:FP32:-1,4"),), outputs=(anymodels.spec("y:FP32:-1"),))
    assert message.startswith("output 'y': a tabular model answers ['label', 'predict', 'prediction']")


def test_a_python_class_that_cannot_batch_is_registered_one_request_at_a_time(tmp_path: Path) -> None:
    artifact = anymodels.npy(tmp_path / "z.npy", 0)
    record = build_record("m", "1", artifact, framework=Framework.PYTHON, factory="tests.anymodels:Shout", load=True)
    assert record.batching.max_batch_size == 1 and [s.name for s in record.inputs] == ["text"]
    # Registered with batching anyway (without loading the class): the worker refuses to load it, saying why.
    batched = dataclasses.replace(record, batching=BatchingConfig(8, 1.0))
    with pytest.raises(ModelLoadError, match="declares batchable = False .* register it with --max-batch-size 1"):
        load_runtime(batched, "cpu")


def test_a_python_factory_that_cannot_be_imported_is_refused(tmp_path: Path) -> None:
    artifact = anymodels.npy(tmp_path / "k.npy", np.float32(1))
    message = refused(artifact, framework=Framework.PYTHON, factory="tests.anymodels:Missing")
    assert message.startswith("cannot import --factory 'tests.anymodels:Missing' (AttributeError")
