"""ReplyWriter on a Redis Cluster when a node's connection is lost with the replies on it.

The cluster client does not raise a node's lost connection from a non-raising pipeline: it hands the error
back as the result of each command sent to that node. Such a reply was maybe never written, so it must count
as undelivered (the round commits nothing and sends it again), never as delivered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from fleet.local.cluster import LocalCluster
from schemas import InferenceResponse, Names, RedisSettings, ReplyAddress, ReplyKind, SettingsError
from workers import BackendDownError
from workers.replies import Reply, ReplyWriter


@pytest.fixture
async def cluster_client(redis_cluster_url: str, names: Names) -> AsyncIterator[Any]:
    """A cluster client; the test's reply stream is deleted afterwards."""
    client = RedisSettings(url=redis_cluster_url).client()
    yield client
    await client.delete(names.reply_stream("gw"))
    await client.aclose()


def _cut_connections(client: Any, key: str) -> None:
    """Close every normal client connection of the node that holds ``key`` (as a dying node does)."""
    node = client.get_node_from_key(key)
    killer = redis.Redis(host=node.host, port=node.port)
    try:
        assert killer.client_kill_filter(_type="normal", skipme=True) >= 1
    finally:
        killer.close()


def _sync_reply(names: Names, rid: str) -> Reply:
    return ReplyAddress(ReplyKind.STREAM, names.reply_stream("gw")), InferenceResponse(rid, "m", "1", batch_size=1)


async def test_a_reply_whose_node_connection_was_lost_is_pending(cluster_client: Any, names: Names) -> None:
    stream = names.reply_stream("gw")
    await cluster_client.xlen(stream)  # a pooled connection to the stream's node, which the node then closes
    _cut_connections(cluster_client, stream)
    writer = ReplyWriter(cluster_client, names)

    report = await writer.deliver_some([_sync_reply(names, "lost")])

    assert [response.id for _, response in report.pending] == ["lost"]
    assert "ConnectionError" in report.error
    assert await cluster_client.xlen(stream) == 0  # it was indeed not written
    # The retry the round makes with the pending replies writes it.
    assert (await writer.deliver_some(report.pending)).pending == []
    entries = await cluster_client.xrange(stream)
    assert [InferenceResponse.from_bytes(fields[b"r"]).id for _, fields in entries] == ["lost"]


async def test_deliver_raises_when_a_node_connection_was_lost(cluster_client: Any, names: Names) -> None:
    stream = names.reply_stream("gw")
    await cluster_client.xlen(stream)
    _cut_connections(cluster_client, stream)
    with pytest.raises(BackendDownError, match="Redis unavailable"):
        await ReplyWriter(cluster_client, names).deliver([_sync_reply(names, "lost")])


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[LocalCluster]:
    """3 masters, each with a replica."""
    cluster = LocalCluster(replicas=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_replies_count_once_a_replica_holds_them(replicated_cluster: LocalCluster, names: Names) -> None:
    """With replica_acks, a reply no replica acknowledged in time is pending (a master failing now would lose
    it); once the replica is back, the retry is acknowledged and delivered."""
    client = RedisSettings(url=replicated_cluster.url).client()
    stream = names.reply_stream("gw")
    other = ""
    try:
        await client.initialize()  # the slot map
        # A stream on another master, whose replica keeps acknowledging. Its gateway id is what varies: a
        # reply stream's slot comes from its hash tag, which a suffix after the tag leaves unchanged.
        candidates = (names.reply_stream(f"gw-elsewhere-{i}") for i in range(64))
        master_name = client.get_node_from_key(stream).name
        other = next(key for key in candidates if client.get_node_from_key(key).name != master_name)
        writer = ReplyWriter(client, names, replica_acks=1, replica_ack_timeout_s=0.2)
        master = client.get_node_from_key(stream)
        (replica,) = replicated_cluster.replicas_of(master.port)
        elsewhere = (ReplyAddress(ReplyKind.STREAM, other), InferenceResponse("fine", "m", "1", batch_size=1))
        replica.pause()
        try:
            report = await writer.deliver_some([_sync_reply(names, "unacked"), elsewhere])
        finally:
            replica.resume()
        assert [response.id for _, response in report.pending] == ["unacked"]
        assert "NOREPLICAS 0 of 1" in report.error and master.name in report.error
        assert (await writer.deliver_some(report.pending)).pending == []
        assert await client.xlen(stream) == 2  # written twice (the gateway keeps the first by id), now replicated
    finally:
        await client.delete(stream, *([other] if other else []))
        await client.aclose()


def test_replica_ack_timeout_must_stay_below_the_socket_timeout() -> None:
    with pytest.raises(SettingsError, match="FLEET_REDIS_REPLICA_ACK_TIMEOUT_S"):
        RedisSettings(replica_acks=1, replica_ack_timeout_s=2.0, socket_timeout_s=2.0)
    with pytest.raises(SettingsError, match="FLEET_REDIS_REPLICA_ACKS"):
        RedisSettings(replica_acks=-1)
    assert RedisSettings(replica_ack_timeout_s=5.0).replica_acks == 0  # unused while off
