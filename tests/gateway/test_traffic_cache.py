"""The registry cache's view of traffic splits against the real Redis: TTL, per-request picks, outages."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from fleet.local.servers import free_port
from gateway.errors import BackendDownError
from gateway.registry_cache import RegistryCache
from schemas import BackendUnavailableError, ModelRecord, ModelRegistry, Names, RedisSettings
from schemas.traffic import TrafficSplit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def registry(redis_client: Any, names: Names, record: ModelRecord) -> ModelRegistry:
    registry = ModelRegistry(redis_client, names)
    await registry.register(record)
    await registry.register(replace(record, version="2"))
    return registry


async def test_split_changes_are_seen_after_the_ttl(registry: ModelRegistry) -> None:
    clock = Clock()
    cache = RegistryCache(registry, ttl_s=1.0, timeout_s=1.0, clock=clock)
    default = await cache.get("tiny")
    assert await cache.split("tiny") is None
    assert (await cache.routed(default, "any-id")).version == "1"
    await registry.set_traffic("tiny", TrafficSplit.parse(["1=0", "2=100"]))
    assert (await cache.routed(default, "any-id")).version == "1"  # cached for the TTL
    clock.now = 1.5
    assert await cache.split("tiny") == TrafficSplit.of({"1": 0, "2": 100})
    assert (await cache.routed(default, "any-id")).version == "2"
    await registry.rollback("tiny")
    clock.now = 3.0
    assert (await cache.routed(default, "any-id")).version == "1"
    await cache.close()


async def test_routed_follows_the_split_per_request_id(registry: ModelRegistry) -> None:
    cache = RegistryCache(registry, ttl_s=60.0, timeout_s=1.0)
    await registry.set_traffic("tiny", TrafficSplit.parse(["1=90", "2=10"]))
    default = await cache.get("tiny")
    ids = [f"r-{i}" for i in range(2000)]
    first = [(await cache.routed(default, i)).version for i in ids]
    assert first == [(await cache.routed(default, i)).version for i in ids]  # retries land on the same version
    counts = Counter(first)
    assert 150 <= counts["2"] <= 250, counts
    assert {(await cache.routed(default, None)).version for _ in range(500)} == {"1", "2"}
    await cache.close()


async def test_malformed_split_serves_the_default(registry: ModelRegistry, redis_client: Any, names: Names) -> None:
    await redis_client.hset(names.traffic_key("tiny"), mapping={"1": "50", "2": "oops"})
    cache = RegistryCache(registry, ttl_s=60.0, timeout_s=1.0)
    assert await cache.split("tiny") is None
    await cache.close()


class FlakyRegistry(ModelRegistry):
    """The real registry whose split lookups fail once ``down`` is set (a Redis outage at the registry seam)."""

    down = False

    async def traffic(self, model: str) -> TrafficSplit | None:
        if self.down:
            raise BackendUnavailableError("Redis unavailable: connection refused")
        return await super().traffic(model)


async def test_known_split_keeps_serving_through_an_outage(
    registry: ModelRegistry, redis_client: Any, names: Names
) -> None:
    await registry.set_traffic("tiny", TrafficSplit.parse(["1=0", "2=100"]))
    flaky = FlakyRegistry(redis_client, names)
    clock = Clock()
    cache = RegistryCache(flaky, ttl_s=1.0, timeout_s=1.0, clock=clock)
    assert await cache.split("tiny") == TrafficSplit.of({"1": 0, "2": 100})
    flaky.down = True
    clock.now = 5.0
    assert await cache.split("tiny") == TrafficSplit.of({"1": 0, "2": 100})  # expired, but the last known split
    cache.invalidate()
    with pytest.raises(BackendDownError, match="connection refused"):
        await cache.split("tiny")
    await cache.close()


async def test_split_outage_is_503_without_a_known_split(names: Names, record: ModelRecord) -> None:
    client = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0").client()
    cache = RegistryCache(ModelRegistry(client, names), ttl_s=60.0, timeout_s=0.5)
    with pytest.raises(BackendDownError, match="redis unavailable"):
        await cache.routed(record, "id")
    await cache.close()
    await client.aclose()
