"""ReplyWriter against the real Redis: one round trip, first result wins, NOSCRIPT recovery, Redis down."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import InferenceResponse, Names, RedisSettings, ReplyAddress, ReplyKind
from workers import BackendDownError
from workers.replies import ReplyWriter


def _response(rid: str, worker: str = "w") -> InferenceResponse:
    return InferenceResponse(rid, "m", "1", worker=worker, batch_size=1)


async def test_first_result_wins_and_only_streams_get_entries(redis_client: Any, names: Names) -> None:
    writer = ReplyWriter(redis_client, names)
    stream = names.reply_stream("gw")
    to_stream = ReplyAddress(ReplyKind.STREAM, stream)
    await redis_client.script_flush()  # the first call meets NOSCRIPT and loads the script
    delivered = await writer.deliver(
        [
            (to_stream, _response("a", "first")),
            (to_stream, _response("a", "second")),  # duplicate inside one round trip
            (ReplyAddress(ReplyKind.RESULT, ""), _response("b")),
            (ReplyAddress(), _response("c")),
        ]
    )
    assert delivered == 3
    assert await writer.deliver([(to_stream, _response("a", "third"))]) == 0  # redelivery later
    entries = await redis_client.xrange(stream)
    assert [InferenceResponse.from_bytes(f[b"r"]).worker for _, f in entries] == ["first"]
    assert 0 < await redis_client.ttl(stream) <= 600
    stored = InferenceResponse.from_bytes(await redis_client.get(names.result_key("a")))
    assert stored.worker == "first"
    assert await redis_client.exists(names.result_key("b"), names.result_key("c")) == 2
    assert await writer.deliver([]) == 0


async def test_redis_down_is_a_backend_error(names: Names) -> None:
    client = RedisSettings(url="redis://127.0.0.1:1/0", connect_timeout_s=0.2).client()
    try:
        with pytest.raises(BackendDownError) as info:
            await ReplyWriter(client, names).deliver([(ReplyAddress(), _response("x"))])
        assert info.value.retriable
    finally:
        await client.aclose()
