"""ReplyStream against the session's real Redis; ReplyWaiters as pure logic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from common import ReplyStream, ReplyWaiters
from schemas import InferenceResponse, Names, RedisSettings


def reply(request_id: str) -> dict[str, bytes]:
    return {"r": InferenceResponse(request_id, "m", "1").to_bytes()}


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` (state of a background routine, which offers no event to wait on)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


@pytest.fixture
def settings(redis_url: str) -> RedisSettings:
    return RedisSettings(url=redis_url, socket_timeout_s=0.5, connect_timeout_s=0.5)


@pytest.fixture
async def redis(settings: RedisSettings, names: Names) -> AsyncIterator[Any]:
    client = settings.client()
    yield client
    async for key in client.scan_iter(match=f"{names.namespace}:*"):
        await client.delete(key)
    await client.aclose()


async def test_hands_on_new_replies_in_order_and_skips_bad_entries(
    settings: RedisSettings, redis: Any, names: Names
) -> None:
    stream = f"{names.namespace}:replies:a"
    await redis.xadd(stream, reply("old"))
    got: list[str] = []
    reader = ReplyStream(settings, stream, lambda response: got.append(response.id))
    await reader.start()
    await until(lambda: reader.healthy)
    for entry in (reply("a"), {"r": b"not msgpack"}, {"x": b"no r field"}, reply("b"), reply("c")):
        await redis.xadd(stream, entry)
    await until(lambda: len(got) == 3)
    assert got == ["a", "b", "c"]  # "old" was there before the reader: not a reply to this process
    await reader.stop()
    await reader.stop()  # idempotent
    assert await redis.exists(stream) == 0
    with pytest.raises(RuntimeError, match="starts once"):
        await reader.start()


async def test_entries_read_are_trimmed(settings: RedisSettings, redis: Any, names: Names) -> None:
    stream = f"{names.namespace}:replies:t"
    got: list[str] = []
    reader = ReplyStream(settings, stream, lambda response: got.append(response.id), read_count=50, trim_every=100)
    await reader.seek_tail()
    await reader.start()
    for i in range(400):
        await redis.xadd(stream, reply(str(i)))
    await until(lambda: len(got) == 400)
    length = await redis.xlen(stream)
    assert length < 400  # approximate MINID trims whole nodes of the stream, so not to the entry
    await reader.stop()


async def test_seek_tail_receives_everything_written_after_it(
    settings: RedisSettings, redis: Any, names: Names
) -> None:
    stream = f"{names.namespace}:replies:b"
    await redis.xadd(stream, reply("before"))
    got: list[str] = []
    reader = ReplyStream(settings, stream, lambda response: got.append(response.id))
    await reader.seek_tail()
    await redis.xadd(stream, reply("between"))  # after the seek, before start
    await reader.start()
    await redis.xadd(stream, reply("after"))
    await until(lambda: len(got) == 2)
    assert got == ["between", "after"]
    await reader.stop(delete_stream=False)
    assert await redis.xlen(stream) >= 1  # kept when asked


async def test_unreachable_redis_is_reported_and_stop_stays_bounded() -> None:
    settings = RedisSettings(url="redis://127.0.0.1:9/0", socket_timeout_s=0.2, connect_timeout_s=0.2)
    reader = ReplyStream(settings, "nowhere", lambda response: None)
    await reader.start()
    await until(lambda: "Redis" in reader.last_error and reader.last_error != "not connected yet")
    assert not reader.healthy
    async with asyncio.timeout(reader.stop_timeout_s + 1):
        await reader.stop()


async def test_waiters_resolve_by_id_and_drop_the_rest() -> None:
    waiters = ReplyWaiters()
    first, second = waiters.expect("a"), waiters.expect("b")
    assert len(waiters) == 2
    waiters.resolve(InferenceResponse("zzz", "m", "1"))  # nobody waits: dropped
    waiters.resolve(InferenceResponse("b", "m", "1"))
    assert second.result().id == "b" and not first.done()
    assert not await waiters.wait_idle(0.01)
    waiters.discard("a")
    assert await waiters.wait_idle(0.01) and len(waiters) == 0


async def test_waiters_fail_everyone_still_waiting() -> None:
    waiters = ReplyWaiters()
    futures = [waiters.expect(str(i)) for i in range(3)]
    futures[0].cancel()  # its caller gave up
    assert waiters.fail(lambda: ConnectionError("stopping")) == 2
    for future in futures[1:]:
        with pytest.raises(ConnectionError, match="stopping"):
            future.result()
    assert len(waiters) == 0 and await waiters.wait_idle(0)
