"""With wake notes the lag collector looks for a missing topic (a bulk-lane topic created by its model's first bulk
request) as soon as a note names it, not at its slow cadence: in process, against the real broker; and the
autoscaler service hands it the notes published on the wake channel."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from autoscaler import AutoscalerService, AutoscalerSettings, LagCollector
from autoscaler.backends import PlacementBackend
from schemas import FleetSettings, Names
from schemas.wake_notes import wake_note

from .test_collector_topic_list import Clock

pytestmark = pytest.mark.integration


async def test_a_note_naming_a_missing_topic_has_it_looked_for_next_round(
    fleet_settings: FleetSettings, names: Names
) -> None:
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    clock = Clock()
    try:
        await admin.create_topics([NewTopic(names.request_topic("a"), 1, 1)])
        async with LagCollector(fleet_settings, missing_refresh_s=30.0, clock=clock) as c:
            assert not (await c.collect(["a"]))["a"].bulk_partitions
            await admin.create_topics([NewTopic(names.bulk_topic("a"), 1, 1)])  # a's first bulk request
            clock.now += 1.0
            c.topic_written(names.request_topic("a"))  # a topic it found: nothing to look for
            assert not (await c.collect(["a"]))["a"].bulk_partitions
            c.topic_written(names.bulk_topic("a"))
            clock.now += 1.0
            assert len((await c.collect(["a"]))["a"].bulk_partitions) == 1  # long before the 30 s cadence
    finally:
        await admin.close()


async def test_the_service_hands_wake_notes_to_its_collector(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []
    monkeypatch.setattr(LagCollector, "topic_written", lambda self, topic: written.append(topic))
    settings = dataclasses.replace(
        AutoscalerSettings(fleet=fleet_settings, leader_election=False), wake_interval_s=1.0, models=("a",)
    )
    async with AutoscalerService(settings, backend=PlacementBackend(fleet_settings)):
        deadline = asyncio.get_running_loop().time() + 10
        while not written:  # the listener subscribes a moment after the start: publish until one arrives
            assert asyncio.get_running_loop().time() < deadline, "no note reached the collector"
            await redis_client.publish(names.wake_channel, wake_note(names.bulk_topic("a"), 0))
            await redis_client.publish(names.wake_channel, b"not a note")
            await asyncio.sleep(0.05)
    assert set(written) == {names.bulk_topic("a")}
