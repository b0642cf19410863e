"""Pieces of the pool mode on their own: the per-model serial executor, partition ownership arithmetic,
partition leases (real Redis) and offsets under any group from one client (real broker)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas import FleetSettings, Names
from workers.group_offsets import GroupOffsets
from workers.leases import PartitionLeases, owned_partitions
from workers.serial import SerialExecutor


def test_a_models_calls_never_overlap_and_run_in_order_on_the_shared_pool() -> None:
    pool = ThreadPoolExecutor(4)
    running, overlaps, order = [0], [0], []
    lock = threading.Lock()

    def call(i: int) -> int:
        with lock:
            running[0] += 1
            overlaps[0] = max(overlaps[0], running[0])
        time.sleep(0.001)
        order.append(i)
        with lock:
            running[0] -= 1
        return i * 2

    serial = SerialExecutor(pool)
    futures = [serial.submit(call, i) for i in range(50)]
    assert [f.result() for f in futures] == [i * 2 for i in range(50)]
    assert overlaps[0] == 1 and order == list(range(50))
    serial.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        serial.submit(call, 1)
    pool.shutdown()


def test_a_failing_call_fails_its_future_only() -> None:
    pool = ThreadPoolExecutor(2)
    serial = SerialExecutor(pool)

    def boom() -> None:
        raise ValueError("model failed")

    failed, fine = serial.submit(boom), serial.submit(lambda: 7)
    with pytest.raises(ValueError):
        failed.result()
    assert fine.result() == 7
    pool.shutdown()


def test_partitions_are_spread_over_the_sorted_replicas() -> None:
    assert owned_partitions("a", [], 4) == [0, 1, 2, 3]  # alone: all of them
    assert owned_partitions("b", ["c", "a", "b"], 8) == [1, 4, 7]
    every = sorted(p for w in ("a", "b", "c") for p in owned_partitions(w, ["a", "b", "c"], 8))
    assert every == list(range(8))  # each partition has exactly one owner
    assert owned_partitions("z", ["a"], 2) == [1]  # a worker not listed yet counts itself in


@pytest.mark.integration
async def test_leases_are_claimed_renewed_and_released_only_by_their_holder(redis_client: Any, names: Names) -> None:
    a = PartitionLeases(redis_client, names, "a", ttl_ms=300)
    b = PartitionLeases(redis_client, names, "b", ttl_ms=300)
    parts = [("t", 0), ("t", 1)]
    assert await a.claim(parts) == [True, True]
    assert await b.claim(parts) == [False, False]
    assert await a.claim(parts) == [True, True]  # a renewal
    await b.release(parts)  # not b's: nothing happens
    assert await a.holders(parts) == ["a", "a"]
    await a.release([("t", 0)])
    assert await b.claim(parts) == [True, False]
    assert await redis_client.pttl(names.lease_key("t", 1)) == -1  # a lease lives as long as its holder's liveness
    assert 0 < await redis_client.pttl(names.lease_holder_key("a")) <= 300
    await asyncio.sleep(0.35)  # a's liveness expires (a crashed worker): its lease of t:1 is free to take
    assert await b.claim(parts) == [True, True]


@pytest.mark.integration
async def test_offsets_are_committed_and_read_under_any_group_from_one_client(
    fleet_settings: FleetSettings, names: Names
) -> None:
    topic = f"{names.namespace}.offsets"
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    await admin.create_topics([NewTopic(topic, 2, 1)])
    await admin.close()
    offsets = GroupOffsets(fleet_settings.kafka)
    await offsets.start()
    try:
        missing = f"{names.namespace}.missing"
        assert await offsets.partitions([topic, missing]) == {topic: 2}
        assert await offsets.partitions([missing]) == {}  # asking did not create it
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        assert await offsets.committed("g1", [tp0, tp1]) == {tp0: None, tp1: None}
        await offsets.commit("g1", {tp0: 5})
        await offsets.commit("g2", {tp0: 9, tp1: 3})
        assert await offsets.committed("g1", [tp0, tp1]) == {tp0: 5, tp1: None}
        assert await offsets.committed("g2", [tp0, tp1]) == {tp0: 9, tp1: 3}
    finally:
        await offsets.close()
