"""The registry epoch and `RegistryCache` against a real Redis server: every write a reader may have cached
moves the epoch, and the cache re-reads only then."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import ModelRecord, ModelRegistry, Names
from schemas.registry import RegistryCache
from schemas.traffic import TrafficSplit


@pytest.fixture
def record(tmp_path: Path) -> ModelRecord:
    return build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"))


async def _epoch(redis: Any, names: Names) -> int:
    return int(await redis.get(names.registry_epoch_key) or 0)


async def test_every_cached_write_moves_the_epoch(redis_client: Any, names: Names, record: ModelRecord) -> None:
    registry = ModelRegistry(redis_client, names)
    writes: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("register", lambda: registry.register(record)),
        ("register v2", lambda: registry.register(replace(record, version="2"))),
        ("register v3 as default", lambda: registry.register(replace(record, version="3"), make_default=True)),
        ("set_default", lambda: registry.set_default("tiny", "2")),
        ("set_traffic", lambda: registry.set_traffic("tiny", TrafficSplit.of({"2": 90, "3": 10}))),
        ("rollback", lambda: registry.rollback("tiny")),
        ("set_traffic again", lambda: registry.set_traffic("tiny", TrafficSplit.of({"3": 50, "1": 50}))),
        ("clear_traffic", lambda: registry.clear_traffic("tiny")),
        ("record_measured_size", lambda: registry.record_measured_size("tiny", "1", 1234)),
        ("record_measured_size gpu", lambda: registry.record_measured_size("tiny", "1", 999, "gpu")),
        ("remove a version", lambda: registry.remove("tiny", "1")),
        ("remove the model", lambda: registry.remove("tiny")),
    ]
    for what, write in writes:
        before = await _epoch(redis_client, names)
        await write()
        assert await _epoch(redis_client, names) > before, f"{what} did not move the registry epoch"


async def test_unchanged_writes_keep_the_epoch(redis_client: Any, names: Names, record: ModelRecord) -> None:
    registry = ModelRegistry(redis_client, names)
    await registry.register(record)
    await registry.record_measured_size("tiny", "1", 1234)
    before = await _epoch(redis_client, names)
    await registry.record_measured_size("tiny", "1", 1234)  # workers write it after every load
    await registry.set_default("tiny", "1")
    assert await _epoch(redis_client, names) == before


async def test_cache_reads_only_when_the_epoch_moved(redis_client: Any, names: Names, record: ModelRecord) -> None:
    registry = ModelRegistry(redis_client, names)
    cache = RegistryCache(redis_client, names)
    assert await cache.refresh()  # the first refresh always loads
    assert cache.models() == []
    await registry.register(record)
    await registry.register(replace(record, version="2", labels={"max_replicas": "3"}))
    assert await cache.refresh()
    assert not await cache.refresh()  # nothing changed: one GET, no reload
    assert cache.reloads == 2
    assert cache.models() == ["tiny"]
    assert cache.get("tiny").version == "1"
    assert cache.traffic("tiny") is None

    await registry.set_traffic("tiny", TrafficSplit.of({"1": 90, "2": 10}))
    await registry.record_measured_size("tiny", "2", 4321)
    assert await cache.refresh()
    assert cache.traffic("tiny") == TrafficSplit.of({"1": 90, "2": 10})
    sized, measured = cache.get_sized("tiny", "2")
    assert (sized.size_bytes, sized.size_measured, measured) == (4321, True, {"cpu": 4321})
    assert sized.labels == {"max_replicas": "3"}

    await registry.rollback("tiny")
    await registry.set_default("tiny", "2")
    assert await cache.refresh()
    assert cache.default_version("tiny") == "2" and cache.traffic("tiny") is None

    await registry.remove("tiny")
    assert await cache.refresh()
    assert cache.models() == []
    with pytest.raises(Exception, match="unknown model"):
        cache.get("tiny")


async def test_cache_commands_per_refresh_do_not_grow_with_models(
    redis_client: Any, names: Names, tmp_path: Path
) -> None:
    """An unchanged registry costs one GET per refresh, with 3 models or with 60."""
    artifact = tiny_mlp(tmp_path / "tiny.onnx")
    registry = ModelRegistry(redis_client, names)
    cache = RegistryCache(redis_client, names)

    async def commands_per_refresh(count: int) -> int:
        for i in range(count):
            await registry.register(build_record(f"m{i:03d}", "1", artifact))
        await cache.refresh()
        before = await _total_commands(redis_client)
        for _ in range(5):
            assert not await cache.refresh()
        return await _total_commands(redis_client) - before

    small = await commands_per_refresh(3)
    large = await commands_per_refresh(60)
    assert cache.models() == [f"m{i:03d}" for i in range(60)]
    assert small == large


async def _total_commands(redis: Any) -> int:
    """Commands the server has run so far, without the INFO call itself."""
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
