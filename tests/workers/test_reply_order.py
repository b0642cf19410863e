"""ReplyWriter on a 3-master Redis Cluster: a reply that is also stored (a producer that may resume) is stored
before its reply-stream entry is written, so a caller that got the entry finds the stored result."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas import InferenceResponse, Names, ReplyAddress, ReplyKind
from tests.conftest import single_or_cluster
from workers.replies import DELIVER_STREAM_SCRIPT, ReplyWriter

#: The order matters where the stream and the result key lie on different nodes: the cluster only.
redis_url = pytest.fixture(params=["cluster"], name="redis_url")(single_or_cluster)


def _on_two_nodes(redis: Any, names: Names) -> tuple[str, str]:
    """A producer's reply stream and a request id whose result key lies on another node than the stream."""
    stream = names.client_reply_stream("resumable")
    stream_node = redis.get_node_from_key(stream).name
    for i in range(100):
        if redis.get_node_from_key(names.result_key(f"r-{i}")).name != stream_node:
            return stream, f"r-{i}"
    raise AssertionError("every result key maps to the stream's node")


async def _held(redis: Any, node: Any) -> None:
    """Return once a client's command waits on ``node`` (paused for writes): a server state, polled."""
    async with asyncio.timeout(10):
        while (await redis.execute_command("INFO", "clients", target_nodes=node))["blocked_clients"] < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_the_stored_result_is_written_before_the_stream_entry(redis_client: Any, names: Names) -> None:
    """The result's node is paused for writes: while its SET waits there, the stream entry (on another node)
    must not be readable yet; once the node takes writes again both are."""
    await redis_client.initialize()  # the slot map, read on first use
    stream, request_id = _on_two_nodes(redis_client, names)
    result_key = names.result_key(request_id)
    result_node = redis_client.get_node_from_key(result_key)
    await redis_client.script_load(DELIVER_STREAM_SCRIPT)  # no NOSCRIPT detour while the node is paused
    writer = ReplyWriter(redis_client, names)
    address = ReplyAddress(ReplyKind.STREAM, stream, ttl_s=600)
    response = InferenceResponse(request_id, "m", "1", worker="w", batch_size=1)
    await redis_client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE", target_nodes=result_node)
    try:
        delivery = asyncio.create_task(writer.deliver([(address, response)]))
        await _held(redis_client, result_node)  # the SET of the result waits on its node
        # Were the entry written alongside the SET, it would be here now (and a caller would read no result).
        early = bool(await redis_client.xread({stream: "0"}, block=200))
        stored_early = await redis_client.get(result_key)
    finally:
        await redis_client.execute_command("CLIENT", "UNPAUSE", target_nodes=result_node)
    assert await delivery == 1
    assert not early, f"the stream entry was readable while the stored result was {stored_early!r}"
    entries = await redis_client.xrange(stream)
    assert [InferenceResponse.from_bytes(fields[b"r"]).id for _, fields in entries] == [request_id]
    assert InferenceResponse.from_bytes(await redis_client.get(result_key)).id == request_id
