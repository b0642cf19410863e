"""The Redis connection pool queues a burst instead of refusing it, and a wait past its timeout says that the
pool is exhausted (this process is overloaded), not that Redis is unavailable."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from gateway import Gateway, GatewaySettings
from schemas import ModelRecord, Names, RedisSettings, SettingsError
from schemas.settings import RedisPoolExhaustedError

from .conftest import wait_ready

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


async def test_a_burst_larger_than_the_pool_waits_for_connections(redis_url: str, names: Names) -> None:
    client = RedisSettings(url=redis_url, max_connections=2).client()
    try:
        key = f"{names.namespace}:burst"
        answers = await asyncio.gather(*(client.incr(key) for _ in range(200)))
        assert sorted(answers) == list(range(1, 201))
        await client.delete(key)
    finally:
        await client.aclose()


async def test_a_wait_past_the_pool_timeout_says_the_pool_is_exhausted(
    redis_url: str, names: Names, redis_client: Any
) -> None:
    client = RedisSettings(url=redis_url, max_connections=1, pool_timeout_s=0.05).client()
    try:
        holder = asyncio.create_task(client.blpop([f"{names.namespace}:never"], timeout=1))  # holds the connection
        while not any(c.get("cmd") == "blpop" for c in await redis_client.client_list()):
            assert not holder.done()
            await asyncio.sleep(0.005)
        with pytest.raises(RedisPoolExhaustedError, match="pool exhausted: all 1 connections"):
            await client.get(f"{names.namespace}:x")
        assert await holder is None  # the held call itself was fine
    finally:
        await client.aclose()


def test_pool_settings_are_checked() -> None:
    for bad in ({"max_connections": 0}, {"pool_timeout_s": 0.0}):
        with pytest.raises(SettingsError):
            RedisSettings(**bad)  # type: ignore[arg-type]


async def test_a_burst_of_async_submissions_on_a_small_pool_is_all_accepted(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> None:
    small = replace(gateway_settings.fleet.redis, max_connections=4)
    settings = replace(gateway_settings, fleet=replace(gateway_settings.fleet, redis=small))
    async with Gateway(settings, names=names) as gw:
        await wait_ready(http, gw)

        async def submit() -> tuple[int, Any]:
            async with http.post(gw.url + "/v2/models/tiny/infer?async=true", json=BODY) as resp:
                return resp.status, await resp.json()

        answers = await asyncio.gather(*(submit() for _ in range(100)))
    refused = [answer for status, answer in answers if status != 202]
    assert refused == []  # was: 503 "redis unavailable: Too many connections" for the part over 4 at once
