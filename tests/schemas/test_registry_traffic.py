"""Traffic splits, the previous-default history and rollback in the registry, against a real Redis."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import ErrorCode, ModelRegistry, Names, RegistryError
from schemas.traffic import TrafficSplit
from tests.conftest import REDIS_KINDS, single_or_cluster

#: Every test here runs on one Redis server and on a 3-master Redis Cluster.
redis_url = pytest.fixture(params=REDIS_KINDS, name="redis_url")(single_or_cluster)


@pytest.fixture
async def registry(redis_client: Any, names: Names, tmp_path: Path) -> ModelRegistry:
    """``tiny`` with versions 1 (the default), 2 and 3."""
    registry = ModelRegistry(redis_client, names)
    record = build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"))
    for version in ("1", "2", "3"):
        await registry.register(replace(record, version=version))
    return registry


async def test_split_canary_then_rollback(registry: ModelRegistry, redis_client: Any, names: Names) -> None:
    assert await registry.traffic("tiny") is None
    await registry.set_traffic("tiny", TrafficSplit.parse(["1=90", "2=10"]))
    assert await registry.traffic("tiny") == TrafficSplit.of({"1": 90, "2": 10})
    assert await redis_client.hgetall(names.traffic_key("tiny")) == {b"1": b"90", b"2": b"10"}
    assert await registry.previous_default("tiny") == "1"  # kept when the rollout started
    await registry.set_traffic("tiny", TrafficSplit.parse(["1=0", "2=100"]))  # replaces, no leftover fields
    assert await redis_client.hgetall(names.traffic_key("tiny")) == {b"1": b"0", b"2": b"100"}

    assert await registry.rollback("tiny") == ("1", "1")
    assert await registry.traffic("tiny") is None and await registry.default_version("tiny") == "1"
    assert await registry.previous_default("tiny") is None
    with pytest.raises(RegistryError, match="nothing to roll back") as info:
        await registry.rollback("tiny")
    assert info.value.code is ErrorCode.INVALID_REQUEST


async def test_promote_then_rollback_returns_to_the_old_default(registry: ModelRegistry) -> None:
    await registry.set_traffic("tiny", TrafficSplit.parse(["1=50", "2=50"]))
    await registry.set_default("tiny", "2")  # promote while the split still runs
    await registry.set_traffic("tiny", TrafficSplit.parse(["2=100"]))  # a split already existed: history kept
    assert await registry.previous_default("tiny") == "1"
    assert await registry.rollback("tiny") == ("2", "1")
    assert await registry.default_version("tiny") == "1" and await registry.traffic("tiny") is None

    await registry.set_default("tiny", "3")
    await registry.set_default("tiny", "3")  # the same default again does not overwrite the history
    assert await registry.previous_default("tiny") == "1"
    assert await registry.rollback("tiny") == ("3", "1")


async def test_register_as_default_keeps_history(registry: ModelRegistry, tmp_path: Path) -> None:
    record = build_record("tiny", "4", tiny_mlp(tmp_path / "t4.onnx", seed=4))
    await registry.register(record, make_default=True)
    assert (await registry.default_version("tiny"), await registry.previous_default("tiny")) == ("4", "1")


async def test_split_validation(registry: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="has no version '9'") as info:
        await registry.set_traffic("tiny", TrafficSplit.parse(["1=90", "9=10"]))
    assert info.value.code is ErrorCode.VERSION_NOT_FOUND
    with pytest.raises(RegistryError) as info:
        await registry.set_traffic("nope", TrafficSplit.parse(["1=100"]))
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND
    assert await registry.traffic("tiny") is None  # nothing was written
    assert await registry.previous_default("tiny") is None
    with pytest.raises(RegistryError) as info:
        await registry.rollback("nope")
    assert info.value.code is ErrorCode.MODEL_NOT_FOUND


async def test_clear_and_remove(registry: ModelRegistry, redis_client: Any, names: Names) -> None:
    await registry.set_traffic("tiny", TrafficSplit.parse(["1=80", "2=20"]))
    with pytest.raises(RegistryError, match="in the traffic split") as info:
        await registry.remove("tiny", "2")
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert await registry.clear_traffic("tiny") is True
    assert await registry.clear_traffic("tiny") is False
    assert await registry.default_version("tiny") == "1"  # --clear returns to the default pointer
    await registry.set_default("tiny", "2")
    assert await registry.remove("tiny", "1") == ["1"]  # the previous default goes: so does the history
    assert await registry.previous_default("tiny") is None
    await registry.set_traffic("tiny", TrafficSplit.parse(["2=60", "3=40"]))
    assert sorted(await registry.remove("tiny")) == ["2", "3"]
    assert await redis_client.exists(names.traffic_key("tiny"), names.previous_default_key("tiny")) == 0
