"""A request whose client got 503 from the publisher never lands on the topic afterwards.

Runs its own embedded broker (the session broker must not be stopped under the other tests): the broker
dies while a record is in the producer's hands and comes back before the producer gives the record up.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from fleet.local.servers import LocalBroker
from gateway.errors import BackendDownError
from gateway.publisher import RequestPublisher
from schemas import InferenceRequest, KafkaSettings, Names
from schemas.topics import ensure_model_topics

pytestmark = pytest.mark.integration


async def _connected(publisher: RequestPublisher) -> None:
    async with asyncio.timeout(30):
        for _ in iter(lambda: publisher.connected, True):
            await asyncio.sleep(0.05)


async def _publish_until_accepted(publisher: RequestPublisher, topic: str, request: InferenceRequest) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                await publisher.publish(topic, request)
                return
            except BackendDownError:
                await asyncio.sleep(0.1)


async def _ids_until(kafka: KafkaSettings, topic: str, last: str) -> list[str]:
    """Request ids on ``topic`` from the start up to and including ``last``."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    ids: list[str] = []
    try:
        async with asyncio.timeout(30):
            while last not in ids:
                message = await consumer.getone()
                ids.append(InferenceRequest.from_bytes(message.value).id)
    finally:
        await consumer.stop()
    return ids


async def test_a_publish_answered_503_does_not_land_later(tmp_path: Path) -> None:
    broker = LocalBroker(log_dir=tmp_path)
    await asyncio.to_thread(broker.start)
    # The producer keeps retrying a record for request_timeout_ms: long enough for the broker to come back.
    kafka = KafkaSettings(bootstrap=broker.bootstrap, request_timeout_ms=10_000)
    names = Names("landing")
    topic = names.request_topic("m")
    publisher = RequestPublisher(kafka, timeout_s=0.5)
    try:
        await ensure_model_topics(kafka, names, "m", 1)
        await publisher.start()
        await _connected(publisher)
        await publisher.publish(topic, InferenceRequest("before", "m", "1", ()))

        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGKILL)  # dies at once, with the record about to be sent
        await asyncio.to_thread(broker.stop)
        during = asyncio.create_task(publisher.publish(topic, InferenceRequest("during", "m", "1", ())))
        # Past the publish timeout (the old gateway had answered 503 by then), well before the producer gives up.
        await asyncio.wait({during}, timeout=1.5)
        await asyncio.to_thread(broker.start)  # same port, empty (in-memory) log
        await ensure_model_topics(kafka, names, "m", 1)
        try:
            await during
            answered_503 = False
        except BackendDownError:
            answered_503 = True
        await _publish_until_accepted(publisher, topic, InferenceRequest("after", "m", "1", ()))
        landed = "during" in await _ids_until(kafka, topic, "after")
        # Either the client was told 503 and the request never runs, or it was queued and was not told 503.
        assert landed != answered_503, f"answered 503: {answered_503}, landed: {landed}"
    finally:
        await publisher.stop()
        await asyncio.to_thread(broker.stop)
