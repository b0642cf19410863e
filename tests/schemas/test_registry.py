"""The model registry against a real Redis server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import ErrorCode, ModelRecord, ModelRegistry, Names, RegistryError, SchemaError, TensorSpec
from tests.conftest import REDIS_KINDS, single_or_cluster

#: Every test here runs on one Redis server and on a 3-master Redis Cluster.
redis_url = pytest.fixture(params=REDIS_KINDS, name="redis_url")(single_or_cluster)


@pytest.fixture
def record(tmp_path: Path) -> ModelRecord:
    return build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"))


def test_record_round_trip(record: ModelRecord) -> None:
    assert ModelRecord.from_bytes(record.to_bytes()) == record
    assert record.inputs == (TensorSpec("x", "FP32", (-1, 16)),)


def test_batching_model_needs_dynamic_batch_dim(record: ModelRecord) -> None:
    with pytest.raises(SchemaError, match="batch"):
        replace(record, inputs=(TensorSpec("x", "FP32", (1, 16)),))


async def test_register_get_default_remove(redis_client: object, names: Names, record: ModelRecord) -> None:
    registry = ModelRegistry(redis_client, names)  # type: ignore[arg-type]
    assert await registry.register(record)
    assert not await registry.register(record)  # identical re-register is a no-op
    v2 = replace(record, version="2")
    await registry.register(v2)
    assert await registry.default_version("tiny") == "1"  # first version stays default
    assert (await registry.get("tiny")).version == "1"
    await registry.set_default("tiny", "2")
    assert (await registry.get("tiny")).version == "2"
    assert await registry.versions("tiny") == ["1", "2"]
    assert await registry.models() == ["tiny"]

    assert (await registry.get("tiny", "2")).size_measured is False  # the artifact size until a load
    await registry.record_measured_size("tiny", "2", 12345)
    measured = await registry.get("tiny", "2")
    assert (measured.size_bytes, measured.size_measured) == (12345, True)
    # Measured on a CPU only: a GPU worker gets that as its best estimate, until it measures its own.
    assert (await registry.get("tiny", "2", device_kind="gpu")).size_bytes == 12345
    await registry.record_measured_size("tiny", "2", 99999, device_kind="gpu")
    assert (await registry.get("tiny", "2", device_kind="gpu")).size_bytes == 99999
    assert (await registry.get("tiny", "2")).size_bytes == 12345
    assert await registry.measured_sizes("tiny", "2") == {"cpu": 12345, "gpu": 99999}

    with pytest.raises(RegistryError) as info:
        await registry.remove("tiny", "2")  # the default of a model with other versions
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert await registry.models() == ["tiny"]
    assert await registry.remove("tiny", "1") == ["1"]  # the previous default
    assert await registry.models() == ["tiny"]  # the live model stays in the index
    assert (await registry.get("tiny")).version == "2"
    assert await registry.previous_default("tiny") is None  # nothing left to roll back to
    assert await registry.remove("tiny") == ["2"]
    assert await registry.models() == []
    assert not await registry.exists("tiny")
    assert await registry.measured_sizes("tiny", "2") == {}  # both kinds removed with the version


async def test_zero_downtime_upgrade_keeps_the_model_indexed(
    redis_client: object, names: Names, record: ModelRecord
) -> None:
    """deploy/README's upgrade: register v2, make it the default, remove v1 (the previous default)."""
    registry = ModelRegistry(redis_client, names)  # type: ignore[arg-type]
    await registry.register(record)
    await registry.register(replace(record, name="other"))
    assert await registry.models() == ["other", "tiny"]
    await registry.register(replace(record, version="2"), make_default=True)
    assert await registry.models() == ["other", "tiny"]
    assert await registry.previous_default("tiny") == "1"
    assert await registry.remove("tiny", "1") == ["1"]
    assert await registry.models() == ["other", "tiny"]
    assert await registry.versions("tiny") == ["2"]
    for model in await registry.models():  # what `fleet models list` does: every listed model resolves
        assert (await registry.get(model)).name == model


async def test_removing_a_whole_model_unlists_it(redis_client: object, names: Names, record: ModelRecord) -> None:
    registry = ModelRegistry(redis_client, names)  # type: ignore[arg-type]
    await registry.register(record)
    await registry.register(replace(record, version="2"))
    await registry.register(replace(record, name="other"))
    assert await registry.remove("tiny") == ["1", "2"]
    assert await registry.models() == ["other"]
    assert not await registry.exists("tiny")
    with pytest.raises(RegistryError) as info:
        await registry.get("tiny")
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND
    # The only version removed by name takes the model out of the index too.
    assert await registry.remove("other", "1") == ["1"]
    assert await registry.models() == []


async def test_versions_are_immutable(redis_client: object, names: Names, record: ModelRecord) -> None:
    registry = ModelRegistry(redis_client, names)  # type: ignore[arg-type]
    await registry.register(record)
    with pytest.raises(RegistryError, match="immutable"):
        await registry.register(replace(record, sha256="0" * 64))


async def test_unknown_model_and_version(redis_client: object, names: Names, record: ModelRecord) -> None:
    registry = ModelRegistry(redis_client, names)  # type: ignore[arg-type]
    with pytest.raises(RegistryError) as info:
        await registry.get("nope")
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND
    await registry.register(record)
    with pytest.raises(RegistryError) as info:
        await registry.get("tiny", "9")
    assert info.value.code is ErrorCode.VERSION_NOT_FOUND
