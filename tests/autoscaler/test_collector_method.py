"""How the lag collector reads log ends: ListOffsets on Kafka, the fetch probe only on the embedded broker."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from autoscaler import LagCollector
from autoscaler.collector import LagMethod, lag_method
from schemas import FleetSettings, KafkaSettings, Names
from schemas.topics import cluster_info

MODEL = "m1"


@pytest.mark.parametrize(
    ("broker", "cluster_id", "expected"),
    [
        ("auto", "tansu_cluster", LagMethod.FETCH_PROBE),
        ("auto", "MkU3OEVBNTcwNTJENDM2Qg", LagMethod.LIST_OFFSETS),  # a Kafka (KRaft) cluster id
        ("auto", None, LagMethod.LIST_OFFSETS),  # a broker that reports no id (Metadata before v2)
        ("kafka", "tansu_cluster", LagMethod.LIST_OFFSETS),
        ("embedded", "MkU3OEVBNTcwNTJENDM2Qg", LagMethod.FETCH_PROBE),
    ],
)
def test_the_method_follows_the_setting_then_the_cluster_id(
    broker: str, cluster_id: str | None, expected: LagMethod
) -> None:
    assert lag_method(KafkaSettings(broker=broker), cluster_id) is expected


@pytest.fixture
async def topic(fleet_settings: FleetSettings, names: Names) -> AsyncIterator[str]:
    name = names.request_topic(MODEL)
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 1)])
        yield name
    finally:
        await admin.close()


async def test_auto_detects_the_session_broker(fleet_settings: FleetSettings, topic: str) -> None:
    info = await cluster_info(fleet_settings.kafka)
    async with LagCollector(fleet_settings) as collector:
        await collector.collect_one(MODEL)
    # The session's broker is the embedded one unless the suite runs against an external cluster.
    assert collector.method is lag_method(fleet_settings.kafka, info.cluster_id)
    assert collector.last_round.method is collector.method and collector.last_round.partitions == 2


async def test_list_offsets_gives_log_ends_and_lag(fleet_settings: FleetSettings, topic: str) -> None:
    # Each record is produced and acknowledged alone, so it is its own batch: then every broker's
    # ListOffsets(latest) is the log end (the embedded one's too, which answers the last batch's start + 1).
    producer = AIOKafkaProducer(**fleet_settings.kafka.producer_kwargs())
    await producer.start()
    try:
        for partition, count in ((0, 3), (1, 1)):
            for _ in range(count):
                await producer.send_and_wait(topic, b"x", partition=partition)
    finally:
        await producer.stop()
    settings = dataclasses.replace(fleet_settings, kafka=dataclasses.replace(fleet_settings.kafka, broker="kafka"))
    async with LagCollector(settings) as collector:
        assert collector.method is LagMethod.LIST_OFFSETS
        load = await collector.collect_one(MODEL)
        assert [(p.partition, p.log_end, p.lag) for p in load.partitions] == [(0, 3, 3), (1, 1, 1)]
        assert collector.last_round.method is LagMethod.LIST_OFFSETS and collector.last_round.stale == 0
        # A second round with nothing new reads the same log ends.
        again = await collector.collect_one(MODEL)
        assert [p.log_end for p in again.partitions] == [3, 1]
