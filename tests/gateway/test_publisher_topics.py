"""The publish path on a cluster where some partitions have no leader and one topic is slow: records go only to
partitions with a leader, and a slow topic fails fast on its own while the other topics keep flowing."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from gateway.errors import BackendDownError
from gateway.publisher import RequestPublisher
from schemas import FleetSettings, InferenceRequest, Names
from schemas.topics import cluster_info, ensure_model_topics

pytestmark = pytest.mark.integration


async def _connected(publisher: RequestPublisher) -> None:
    async with asyncio.timeout(30):
        for _ in iter(lambda: publisher.connected, True):
            await asyncio.sleep(0.05)


def _request(n: int) -> InferenceRequest:
    return InferenceRequest(f"r{n}", "m", "1", ())


def _leaderless(cluster: Any, topic: str, partitions: int, without_leader: set[int]) -> None:
    """Make ``cluster`` (aiokafka's ClusterMetadata) see ``topic`` with no leader on ``without_leader``."""
    brokers = [(b.nodeId, b.host, b.port) for b in cluster.brokers()]
    leader = brokers[0][0]
    rows = [(0, p, -1 if p in without_leader else leader, [leader], [leader]) for p in range(partitions)]
    cluster.update_metadata(types.SimpleNamespace(API_VERSION=0, brokers=brokers, topics=[(0, topic, rows)]))


async def _counts(settings: FleetSettings, topic: str, partitions: int) -> list[int]:
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        counts = [0] * partitions
        async with asyncio.timeout(20):
            while sum(counts) < 40:
                for tp, records in (await consumer.getmany(*tps, timeout_ms=200)).items():
                    counts[tp.partition] += len(records)
        return counts
    finally:
        await consumer.stop()


async def test_records_go_only_to_partitions_with_a_leader(fleet_settings: FleetSettings, names: Names) -> None:
    topic = names.request_topic("m")
    await ensure_model_topics(fleet_settings.kafka, names, "m", 4)
    publisher = RequestPublisher(fleet_settings.kafka, timeout_s=1.0)
    await publisher.start()
    try:
        await _connected(publisher)
        producer: Any = publisher._producer
        await producer.partitions_for(topic)
        # Partitions 1 and 3 lost their leader (a broker restarts): the producer's metadata says so.
        _leaderless(producer.client.cluster, topic, 4, {1, 3})
        await asyncio.gather(*(publisher.publish(topic, _request(n)) for n in range(40)))
    finally:
        await publisher.stop()
    counts = await _counts(fleet_settings, topic, 4)
    assert counts[1] == counts[3] == 0 and counts[0] + counts[2] == 40 and counts[0] and counts[2]


class _SlowTopicProducer(AIOKafkaProducer):  # type: ignore[misc]  # aiokafka is untyped
    """A real producer on which one topic's metadata and sends wait until ``release`` is set."""

    slow_topic = ""
    release = asyncio.Event()

    async def partitions_for(self, topic: str) -> Any:
        if topic == self.slow_topic:
            await self.release.wait()
        return await super().partitions_for(topic)

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> Any:
        if topic == self.slow_topic:
            await self.release.wait()
        return await super().send(topic, *args, **kwargs)


@pytest.fixture
async def slow_publisher(fleet_settings: FleetSettings, names: Names) -> AsyncIterator[RequestPublisher]:
    for model in ("slow", "fine"):
        await ensure_model_topics(fleet_settings.kafka, names, model, 1)
    _SlowTopicProducer.slow_topic = names.request_topic("slow")
    _SlowTopicProducer.release = asyncio.Event()
    factory: Callable[..., AIOKafkaProducer] = _SlowTopicProducer
    publisher = RequestPublisher(fleet_settings.kafka, timeout_s=0.5, producer_factory=factory)
    await publisher.start()
    try:
        await _connected(publisher)
        yield publisher
    finally:
        _SlowTopicProducer.release.set()
        await publisher.stop()


async def test_a_slow_topic_fails_fast_alone_and_recovers(
    slow_publisher: RequestPublisher, fleet_settings: FleetSettings, names: Names
) -> None:
    slow, fine = names.request_topic("slow"), names.request_topic("fine")
    # The slow topic has no leader in the producer's metadata (a publish with a leader known does not wait for
    # metadata at all), and its metadata does not come.
    _leaderless(slow_publisher._producer.client.cluster, slow, 1, {0})  # type: ignore[union-attr]
    with pytest.raises(BackendDownError) as first:
        await slow_publisher.publish(slow, _request(1))
    assert "no topic metadata within 0.5 s" in first.value.message
    assert slow_publisher.topic_problem(slow) is not None
    # The next publish to it does not wait: its breaker is open.
    with pytest.raises(BackendDownError) as fast:
        await slow_publisher.publish(slow, _request(2))
    assert "failing fast until the topic has a leader again" in fast.value.message and slow in fast.value.message
    # Every other topic keeps flowing, and the cluster is not taken for down.
    for n in range(5):
        await slow_publisher.publish(fine, _request(10 + n))
    assert await slow_publisher.check() is None and slow_publisher.topic_problem(fine) is None
    # Once the topic answers again, its probe closes the breaker.
    _SlowTopicProducer.release.set()
    async with asyncio.timeout(15):
        for _ in iter(lambda: slow_publisher.topic_problem(slow), None):
            await asyncio.sleep(0.05)
    await slow_publisher.publish(slow, _request(3))


async def test_idempotence_follows_the_cluster(slow_publisher: RequestPublisher, fleet_settings: FleetSettings) -> None:
    # The embedded broker lacks the idempotent producer; Kafka (an external KAFKA_BOOTSTRAP) gets it.
    kafka = fleet_settings.kafka
    assert slow_publisher.idempotent is kafka.idempotent((await cluster_info(kafka)).cluster_id)
