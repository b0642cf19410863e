"""LagCollector against the session's real broker: known produced and committed counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from autoscaler import LagCollector
from schemas import FleetSettings, Names

MODEL = "m1"


@pytest.fixture
async def topic(fleet_settings: FleetSettings, names: Names) -> AsyncIterator[str]:
    """The model's request topic, created with 3 partitions (and deleted afterwards)."""
    name = names.request_topic(MODEL)
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 3, 1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


@pytest.fixture
async def producer(fleet_settings: FleetSettings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(**fleet_settings.kafka.producer_kwargs())
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def collector(fleet_settings: FleetSettings) -> AsyncIterator[LagCollector]:
    async with LagCollector(fleet_settings, half_life_s=0.5) as c:
        yield c


async def produce(producer: AIOKafkaProducer, topic: str, counts: dict[int, int]) -> None:
    sends = [
        await producer.send(topic, b"x" * 64, key=f"{p}-{i}".encode(), partition=p)
        for p, n in counts.items()
        for i in range(n)
    ]
    await asyncio.gather(*sends)


async def commit(settings: FleetSettings, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def test_offsets_and_lag_match_known_counts(
    fleet_settings: FleetSettings, names: Names, topic: str, producer: AIOKafkaProducer, collector: LagCollector
) -> None:
    await produce(producer, topic, {0: 5, 1: 12, 2: 0})
    await commit(fleet_settings, names.worker_group(MODEL), {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 12})

    load = await collector.collect_one(MODEL)

    assert load.topic == topic and load.group == names.worker_group(MODEL) and load.topic_exists
    assert [(p.partition, p.log_end, p.committed, p.lag) for p in load.partitions] == [
        (0, 5, 3, 2),
        (1, 12, 12, 0),
        (2, 0, None, 0),  # empty partition, no commit
    ]
    assert load.partition_count == 3 and load.lag == 2 and load.log_end == 17
    assert not load.rates_known and load.anomalies == ()

    # Later rounds keep seeing the same numbers (the probe seeks to the known end, never past it).
    again = await collector.collect_one(MODEL)
    assert [(p.log_end, p.lag) for p in again.partitions] == [(5, 2), (12, 0), (0, 0)]
    assert again.rates_known and again.arrival_rate == 0.0


async def test_group_without_commits_lags_by_everything(
    topic: str, producer: AIOKafkaProducer, collector: LagCollector
) -> None:
    await produce(producer, topic, {0: 4, 1: 1, 2: 7})
    load = await collector.collect_one(MODEL)
    assert [(p.committed, p.lag) for p in load.partitions] == [(None, 4), (None, 1), (None, 7)]
    assert load.lag == 12


async def test_rates_follow_production_and_commits(
    fleet_settings: FleetSettings, names: Names, topic: str, producer: AIOKafkaProducer, collector: LagCollector
) -> None:
    await produce(producer, topic, {0: 10, 1: 10, 2: 10})
    first = await collector.collect_one(MODEL)
    assert first.log_end == 30 and first.arrival_rate == 0.0

    await asyncio.sleep(0.2)  # a rate needs elapsed time
    await produce(producer, topic, {0: 20, 1: 0, 2: 5})
    await commit(fleet_settings, names.worker_group(MODEL), {TopicPartition(topic, 0): 30})
    second = await collector.collect_one(MODEL)

    assert [p.log_end for p in second.partitions] == [30, 10, 15]
    assert [p.lag for p in second.partitions] == [0, 10, 15]
    by_partition = {p.partition: p for p in second.partitions}
    assert by_partition[0].arrival_rate > 0 and by_partition[2].arrival_rate > 0
    assert by_partition[1].arrival_rate == 0.0
    assert by_partition[0].completion_rate > 0 and by_partition[1].completion_rate == 0.0
    assert second.arrival_rate > 0 and second.completion_rate > 0


async def test_commit_beyond_log_end_is_no_lag(
    fleet_settings: FleetSettings, names: Names, topic: str, producer: AIOKafkaProducer, collector: LagCollector
) -> None:
    await produce(producer, topic, {0: 2})
    await commit(fleet_settings, names.worker_group(MODEL), {TopicPartition(topic, 0): 50})
    load = await collector.collect_one(MODEL)
    p0 = load.partitions[0]
    assert (p0.log_end, p0.committed, p0.lag) == (2, 50, 0)
    assert "beyond log end" in p0.anomaly


async def test_missing_topic_is_empty_and_not_created(
    fleet_settings: FleetSettings, names: Names, collector: LagCollector
) -> None:
    load = await collector.collect_one("ghost")
    assert not load.topic_exists and load.partitions == () and load.lag == 0
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        assert names.request_topic("ghost") not in await admin.list_topics()
    finally:
        await admin.close()


async def test_several_models_in_one_round(
    fleet_settings: FleetSettings, names: Names, topic: str, producer: AIOKafkaProducer, collector: LagCollector
) -> None:
    other = names.request_topic("m2")
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(other, 2, 1)])
        await produce(producer, topic, {1: 3})
        await produce(producer, other, {0: 1, 1: 2})
        loads = await collector.collect([MODEL, "m2", "ghost"])
        assert (loads[MODEL].lag, loads["m2"].lag, loads["ghost"].lag) == (3, 3, 0)
        assert loads["m2"].partition_count == 2
        # dropping a model from the round re-assigns the probe to the remaining partitions
        assert (await collector.collect(["m2"]))["m2"].lag == 3
    finally:
        await admin.delete_topics([other])
        await admin.close()


async def test_bulk_lane_lag_counts_with_its_own_group(
    fleet_settings: FleetSettings, names: Names, topic: str, producer: AIOKafkaProducer, collector: LagCollector
) -> None:
    bulk = names.bulk_topic(MODEL)
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(bulk, 2, 1)])
        await produce(producer, topic, {0: 4})
        await produce(producer, bulk, {0: 10, 1: 6})
        # The interactive group's commit on the bulk topic must not count: each lane has its own group.
        await commit(fleet_settings, names.worker_group(MODEL), {TopicPartition(bulk, 0): 10})
        await commit(fleet_settings, names.worker_group(MODEL, "bulk"), {TopicPartition(bulk, 0): 7})
        load = await collector.collect_one(MODEL)
    finally:
        await admin.delete_topics([bulk])
        await admin.close()
    assert [(p.partition, p.log_end, p.committed, p.lag) for p in load.bulk_partitions] == [
        (0, 10, 7, 3),
        (1, 6, None, 6),
    ]
    assert load.bulk_lag == 9 and load.lag == 4 + 9 and load.log_end == 4 + 16
    assert load.partition_count == 3  # the interactive topic has 3 partitions, the bulk one 2


async def test_idle_caught_up_partitions_cost_no_offset_reads(
    fleet_settings: FleetSettings, names: Names, topic: str, producer: AIOKafkaProducer, collector: LagCollector
) -> None:
    await produce(producer, topic, {0: 3, 1: 2})
    group = names.worker_group(MODEL)
    await commit(fleet_settings, group, {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 1})
    first = await collector.collect_one(MODEL)
    assert collector.last_round.partitions == 3 and collector.last_round.offset_fetches == 1
    assert [p.lag for p in first.partitions] == [0, 1, 0]

    # Nothing produced: only partition 1 (it has lag, its commit may move) is read again.
    await commit(fleet_settings, group, {TopicPartition(topic, 1): 2})
    second = await collector.collect_one(MODEL)
    assert (collector.last_round.moving, collector.last_round.offset_fetches) == (1, 1)
    assert [(p.committed, p.lag) for p in second.partitions] == [(3, 0), (2, 0), (None, 0)]

    # Everything caught up and idle: no ListOffsets, no OffsetFetch; the numbers stay.
    third = await collector.collect_one(MODEL)
    assert (collector.last_round.moving, collector.last_round.offset_fetches) == (0, 0)
    assert [(p.log_end, p.committed, p.lag) for p in third.partitions] == [(3, 3, 0), (2, 2, 0), (0, None, 0)]

    # A record arrives on partition 2: that partition is measured again and shows its lag.
    await produce(producer, topic, {2: 4})
    fourth = await collector.collect_one(MODEL)
    assert (collector.last_round.moving, collector.last_round.offset_fetches) == (1, 1)
    assert [(p.log_end, p.lag) for p in fourth.partitions] == [(3, 0), (2, 0), (4, 4)]
