"""A lane's offset commits on the real broker: the rounds answered within the commit interval go in one commit,
never past a round not answered, and a flush (rebalance, stop) sends what is queued at once."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from schemas import FleetSettings, Lane, ModelRecord, Names
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from workers.handler import Fetched
from workers.lanes import LaneConsumer

from .conftest import make_request

pytestmark = pytest.mark.integration


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass


async def _produce(producer: AIOKafkaProducer, names: Names, count: int) -> None:
    """``count`` requests to partition 0 of tiny's topic (one partition: the commits are compared in order)."""
    for i in range(count):
        request = make_request("s", np.ones((1, 16), np.float32), rid=f"c-{i}")
        key = request.id.encode()
        headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, b"1")]
        topic = names.request_topic("tiny")
        await (await producer.send(topic, request.to_bytes(), key=key, headers=headers, partition=0))


async def _committed(lane: LaneConsumer, tp: TopicPartition, offset: int) -> None:
    """Wait (20 s at most) until the lane's group has committed ``offset`` on ``tp``."""
    for _ in range(400):
        if await lane.consumer.committed(tp) == offset:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{tp} committed {await lane.consumer.committed(tp)}, not {offset}")


async def _take(lane: LaneConsumer, count: int) -> list[Fetched]:
    items: list[Fetched] = []
    async with asyncio.timeout(20):
        while len(items) < count:
            items += await lane.take(500, count - len(items))
    return items


async def test_rounds_within_the_interval_share_one_commit_and_a_flush_sends_it(
    tiny_model: ModelRecord, producer: AIOKafkaProducer, fleet_settings: FleetSettings, names: Names
) -> None:
    await _produce(producer, names, 3)
    lane = LaneConsumer("tiny", Lane.INTERACTIVE, names, fleet_settings.kafka, commit_interval_ms=60_000)
    await lane.start(_Rebalance())
    # The lane's fetch routine is guarded against sleeping on a fetch already answered (common.fetch_wake; the
    # race itself is reproduced in test_pool_fetch_wake): unguarded, records waited up to 200 ms for its timer.
    assert "_get_actions_per_node" in vars(lane._consumer._fetcher)  # type: ignore[union-attr]
    try:
        items = await _take(lane, 3)
        record = items[0].record
        tp = TopicPartition(record.topic, record.partition)
        await lane.commit_soon(items[:1])  # the first commit goes at once
        await _committed(lane, tp, record.offset + 1)
        await lane.commit_soon(items[1:2])  # the next rounds wait for the interval, queued in one commit
        await lane.commit_soon(items[2:])
        await asyncio.sleep(0.5)  # a commit per round would have landed by now
        assert await lane.consumer.committed(tp) == record.offset + 1
        await lane.flush_commits()  # a rebalance or a stop: sent now, in one commit
        assert await lane.consumer.committed(tp) == items[2].record.offset + 1
    finally:
        await lane.stop()


async def test_with_no_interval_every_round_is_committed_and_a_stop_flushes(
    tiny_model: ModelRecord, producer: AIOKafkaProducer, fleet_settings: FleetSettings, names: Names
) -> None:
    await _produce(producer, names, 4)
    lane = LaneConsumer("tiny", Lane.INTERACTIVE, names, fleet_settings.kafka, commit_interval_ms=0)
    await lane.start(_Rebalance())
    items = await _take(lane, 4)
    tp = TopicPartition(items[0].record.topic, items[0].record.partition)
    try:
        for item in items:
            await lane.commit_soon([item])
        await _committed(lane, tp, items[-1].record.offset + 1)
    finally:
        await lane.stop()
