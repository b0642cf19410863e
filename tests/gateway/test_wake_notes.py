"""Wake notes against the real broker and Redis: with FLEET_GATEWAY_WAKE_INTERVAL_S a gateway names, on the wake
channel, the partition each request landed on (once per partition per interval), and names nothing when off."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
import numpy as np
import pytest

from gateway import Gateway, GatewaySettings
from schemas import ModelRecord, Names

from .conftest import serve_one, wait_ready

pytestmark = pytest.mark.integration

BODY = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": np.ones(16).tolist()}]}


async def _notes_while(redis: Any, names: Names, work: Any) -> list[str]:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(names.wake_channel)
    try:
        await work()
        notes: list[str] = []
        deadline = asyncio.get_running_loop().time() + 1.0  # a note is sent within a moment of its request
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None:  # None: the subscription's confirmation, or the time is up
                notes.append(message["data"].decode())
        return notes
    finally:
        await pubsub.aclose()


@pytest.mark.parametrize("interval_s", [60.0, 0.0])
async def test_a_gateway_names_the_partition_a_request_landed_on_once_per_interval(
    gateway_settings: GatewaySettings,
    names: Names,
    registered: ModelRecord,
    redis_client: Any,
    requests_topic: Any,
    http: aiohttp.ClientSession,
    interval_s: float,
) -> None:
    settings = dataclasses.replace(gateway_settings, wake_interval_s=interval_s)
    async with Gateway(settings, names=names) as gw:
        await wait_ready(http, gw)

        async def three_requests() -> None:
            for _ in range(3):
                answered = asyncio.create_task(serve_one(requests_topic, redis_client, names))
                async with http.post(f"{gw.url}/v2/models/tiny/infer", json=BODY) as resp:
                    assert resp.status == 200, await resp.text()
                await answered

        notes = await _notes_while(redis_client, names, three_requests)
    topic = names.request_topic(registered.name)
    assert notes == ([f"{topic}:0"] if interval_s else [])  # one partition, three requests: named once
