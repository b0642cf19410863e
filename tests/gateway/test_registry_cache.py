"""RegistryCache against the real Redis: TTL, shared misses, 404s and outages."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from fleet.local.servers import free_port
from gateway.errors import BackendDownError, ModelNotFoundError, VersionNotFoundError
from gateway.registry_cache import RegistryCache
from schemas import ModelRecord, ModelRegistry, Names, RedisSettings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_default_pointer_moves_after_the_ttl(redis_client: Any, names: Names, record: ModelRecord) -> None:
    registry = ModelRegistry(redis_client, names)
    await registry.register(record)
    await registry.register(replace(record, version="2"))
    clock = Clock()
    cache = RegistryCache(registry, ttl_s=1.0, timeout_s=1.0, clock=clock)
    assert (await cache.get("tiny")).version == "1"
    await registry.set_default("tiny", "2")
    assert (await cache.get("tiny")).version == "1"  # cached
    clock.now = 1.5
    assert (await cache.get("tiny")).version == "2"
    assert (await cache.get("tiny", "1")).version == "1"
    await cache.close()


async def test_not_found_is_cached_and_raised_fresh(redis_client: Any, names: Names, record: ModelRecord) -> None:
    registry = ModelRegistry(redis_client, names)
    clock = Clock()
    cache = RegistryCache(registry, ttl_s=1.0, timeout_s=1.0, clock=clock)
    with pytest.raises(ModelNotFoundError) as first:
        await cache.get("tiny")
    await registry.register(record)
    with pytest.raises(ModelNotFoundError) as second:
        await cache.get("tiny")  # the miss is cached for the TTL
    assert first.value is not second.value
    with pytest.raises(VersionNotFoundError, match="no version '7'"):
        await cache.get("tiny", "7")
    clock.now = 2.0
    assert (await cache.get("tiny")).name == "tiny"
    await cache.close()


async def test_concurrent_misses_share_one_lookup(redis_client: Any, names: Names, record: ModelRecord) -> None:
    registry = ModelRegistry(redis_client, names)
    await registry.register(record)
    cache = RegistryCache(registry, ttl_s=1.0, timeout_s=1.0)
    records = await asyncio.gather(*(cache.get("tiny") for _ in range(20)))
    assert all(r is records[0] for r in records)  # one lookup, one decoded record
    await cache.close()


async def test_redis_down_is_backend_unavailable_and_not_cached(names: Names) -> None:
    client = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0").client()
    cache = RegistryCache(ModelRegistry(client, names), ttl_s=60.0, timeout_s=0.5)
    for _ in range(2):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BackendDownError, match="redis unavailable"):
            await cache.get("tiny")
        assert loop.time() - started < 1.5
    await cache.close()
    await client.aclose()
