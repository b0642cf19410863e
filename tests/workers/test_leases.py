"""Partition leases tied to the holder's liveness, and placement replicas read on change (real Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import Names
from tests.conftest import REDIS_KINDS, single_or_cluster
from workers.leases import PartitionLeases, PlacementReplicas

#: Every test here runs on one Redis server and on a 3-master Redis Cluster.
redis_url = pytest.fixture(params=REDIS_KINDS, name="redis_url")(single_or_cluster)

pytestmark = pytest.mark.integration


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_worker_is_fenced_before_its_liveness_can_lapse_and_until_a_lapse_is_checked(
    redis_client: Any, names: Names
) -> None:
    clock = Clock()
    a = PartitionLeases(redis_client, names, "a", ttl_ms=60_000, clock=clock)
    assert a.fenced  # never live yet
    assert await a.claim([("t", 0)]) == [True]
    assert not a.fenced and not a.lapsed
    clock.now += 39.0
    assert not a.fenced
    clock.now += 2.0  # 41 s without a write: two of the three intervals of the TTL
    assert a.fenced
    await a.keep_alive()
    assert not a.fenced and not a.lapsed  # the key was still there: nothing to check
    # The key goes (expired while the worker could not reach Redis, or lost by Redis): a lapse.
    await redis_client.delete(names.lease_holder_key("a"))
    b = PartitionLeases(redis_client, names, "b", ttl_ms=60_000, clock=clock)
    assert await b.claim([("t", 0)]) == [True]  # a's lease is free to take once a is not live
    await a.keep_alive()
    assert a.lapsed and a.fenced  # live again, but fenced until it has checked its leases
    lapses = a.lapses
    assert await a.holders([("t", 0)]) == ["b"]
    a.checked(lapses)
    assert not a.lapsed and not a.fenced
    # A write that comes more than a TTL after the last one counts as a lapse even if the key is back.
    clock.now += 61.0
    await a.keep_alive()
    assert a.lapsed


async def test_replicas_are_read_again_only_when_the_placement_epoch_moves(redis_client: Any, names: Names) -> None:
    replicas = PlacementReplicas(redis_client, names, "w2")
    await redis_client.hset(names.placement_key("m"), mapping={"workers": "w1,w2"})
    assert await replicas.read(["m", "other"]) == {"m": ["w1", "w2"], "other": ["w2"]}
    await redis_client.hset(names.placement_key("m"), mapping={"workers": "w3"})
    assert (await replicas.read(["m"]))["m"] == ["w1", "w2"]  # the epoch did not move: not read again
    await redis_client.hset(names.placement_key("new"), mapping={"workers": "w1"})
    assert (await replicas.read(["m", "new"]))["new"] == ["w1", "w2"]  # a model not read before is read
    await redis_client.incr(names.placement_epoch_key)
    assert await replicas.read(["m", "new"]) == {"m": ["w2", "w3"], "new": ["w1", "w2"]}
