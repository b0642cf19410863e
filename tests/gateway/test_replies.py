"""ReplyListener against its own Redis server, which the test restarts to check the reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from fleet.local.servers import LocalRedis
from gateway.errors import BackendDownError
from gateway.replies import ReplyListener
from schemas import InferenceResponse, RedisSettings

STREAM = "t-replies:replies:gw-1"


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` (state of a background routine, which offers no event to wait on)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def reply(request_id: str) -> dict[str, bytes]:
    return {"r": InferenceResponse(request_id, "m", "1").to_bytes()}


@pytest.fixture
async def server() -> AsyncIterator[LocalRedis]:
    redis = LocalRedis()
    await asyncio.to_thread(redis.start)
    yield redis
    await asyncio.to_thread(redis.stop)


async def test_resolves_by_id_and_survives_a_redis_restart(server: LocalRedis) -> None:
    settings = RedisSettings(url=server.url, socket_timeout_s=0.5, connect_timeout_s=0.5)
    client = settings.client()
    listener = ReplyListener(settings, STREAM)
    await listener.start()
    await until(lambda: listener.healthy)

    first, second = listener.expect("a"), listener.expect("b")
    await client.xadd(STREAM, reply("b"))
    await client.xadd(STREAM, reply("zzz"))  # nobody waits: dropped
    await client.xadd(STREAM, reply("a"))
    assert (await asyncio.wait_for(first, 5)).id == "a"
    assert (await asyncio.wait_for(second, 5)).id == "b"
    assert listener.waiting == 0

    await asyncio.to_thread(server.stop)
    await until(lambda: not listener.healthy)
    assert "Redis" in listener.last_error
    pending = listener.expect("c")
    await asyncio.to_thread(server.start)
    await until(lambda: listener.healthy)
    await client.aclose()
    client = settings.client()  # the old connections died with the server
    await client.xadd(STREAM, reply("c"))
    assert (await asyncio.wait_for(pending, 5)).id == "c"

    waiting = listener.expect("never")
    await listener.stop()
    await listener.stop()  # idempotent
    with pytest.raises(BackendDownError, match="stopping"):
        await waiting
    assert await client.exists(STREAM) == 0  # the gateway's stream goes with it
    await client.aclose()
