"""The publisher against a broker that dies and comes back: 503s without waiting on the dead broker, then recovery.

Runs its own embedded broker (the session broker must not be stopped under the other tests).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

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


async def test_broker_outage_fails_fast_then_recovers(tmp_path: Path) -> None:
    broker = LocalBroker(log_dir=tmp_path)
    broker.start()
    kafka = KafkaSettings(bootstrap=broker.bootstrap, request_timeout_ms=2000)
    names = Names("outage")
    topic = names.request_topic("m")
    publisher = RequestPublisher(kafka, timeout_s=1.0)
    try:
        await ensure_model_topics(kafka, names, "m", 1)
        await publisher.start()
        await _connected(publisher)
        await publisher.publish(topic, InferenceRequest("before", "m", "1", ()))

        await asyncio.to_thread(broker.stop)
        with pytest.raises(BackendDownError) as first:
            await publisher.publish(topic, InferenceRequest("during-1", "m", "1", ()))
        assert "publish" in first.value.message  # this one did try the broker (timed out or failed)
        # The next ones do not wait on the dead broker: they get the probe's verdict at once.
        for n in range(3):
            with pytest.raises(BackendDownError) as later:
                async with asyncio.timeout(0.5):
                    await publisher.publish(topic, InferenceRequest(f"during-{n + 2}", "m", "1", ()))
            assert later.value.code.value == "BACKEND_UNAVAILABLE"

        await asyncio.to_thread(broker.start)  # same port; the embedded broker starts empty
        await ensure_model_topics(kafka, names, "m", 1)
        async with asyncio.timeout(30):
            while True:
                try:
                    await publisher.publish(topic, InferenceRequest("after", "m", "1", ()))
                    break
                except BackendDownError:
                    await asyncio.sleep(0.2)
    finally:
        await publisher.stop()
        broker.stop()
