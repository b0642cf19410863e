"""ReplyWriter against the real Redis: one round trip, first result wins, NOSCRIPT recovery, Redis down."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import InferenceResponse, Names, RedisSettings, ReplyAddress, ReplyKind
from tests.conftest import REDIS_KINDS, single_or_cluster
from workers import BackendDownError
from workers.replies import ReplyWriter

#: Every test here runs on one Redis server and on a 3-master Redis Cluster.
redis_url = pytest.fixture(params=REDIS_KINDS, name="redis_url")(single_or_cluster)


def _response(rid: str, worker: str = "w") -> InferenceResponse:
    return InferenceResponse(rid, "m", "1", worker=worker, batch_size=1)


async def test_first_result_wins_and_only_streams_get_entries(redis_client: Any, names: Names) -> None:
    writer = ReplyWriter(redis_client, names)
    stream = names.client_reply_stream("p1")
    to_stream = ReplyAddress(ReplyKind.STREAM, stream, ttl_s=600)  # a producer that may resume: result kept
    await redis_client.script_flush()  # the first call meets NOSCRIPT and loads the script
    delivered = await writer.deliver(
        [
            (to_stream, _response("a", "first")),
            (to_stream, _response("a", "second")),  # duplicate inside one round trip
            (ReplyAddress(ReplyKind.RESULT, ""), _response("b")),
            (ReplyAddress(), _response("c")),  # nobody waits: nothing stored
        ]
    )
    assert delivered == 4  # the stream entries and the reply nobody reads count; the second result does not
    assert await writer.deliver([(ReplyAddress(ReplyKind.RESULT, ""), _response("b", "later"))]) == 0
    entries = await redis_client.xrange(stream)
    # Both reach the stream (the client takes the first by id); the stored result is the first.
    assert [InferenceResponse.from_bytes(f[b"r"]).worker for _, f in entries] == ["first", "second"]
    assert 0 < await redis_client.ttl(stream) <= 600
    stored = InferenceResponse.from_bytes(await redis_client.get(names.result_key("a")))
    assert stored.worker == "first" and 0 < await redis_client.ttl(names.result_key("a")) <= 3600
    assert InferenceResponse.from_bytes(await redis_client.get(names.result_key("b"))).worker == "w"
    assert await redis_client.exists(names.result_key("c")) == 0
    assert await writer.deliver([]) == 0


async def test_a_sync_reply_stores_nothing_but_its_stream_entry(redis_client: Any, names: Names) -> None:
    """A gateway's reply (kind stream, no ttl_s): one entry on its reply stream, no key per request."""
    stream = names.reply_stream("gw")
    await ReplyWriter(redis_client, names).deliver([(ReplyAddress(ReplyKind.STREAM, stream), _response("s"))])
    assert [InferenceResponse.from_bytes(f[b"r"]).id for _, f in await redis_client.xrange(stream)] == ["s"]
    assert [k async for k in redis_client.scan_iter(match=f"{names.namespace}:*")] == [stream.encode()]


async def test_redis_down_is_a_backend_error(names: Names) -> None:
    client = RedisSettings(url="redis://127.0.0.1:1/0", connect_timeout_s=0.2).client()
    try:
        with pytest.raises(BackendDownError) as info:
            await ReplyWriter(client, names).deliver([(ReplyAddress(ReplyKind.RESULT, ""), _response("x"))])
        assert info.value.retriable
    finally:
        await client.aclose()
