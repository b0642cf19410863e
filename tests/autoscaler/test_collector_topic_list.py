"""The lag collector lists the cluster's topics (a Metadata request naming every topic) only when it is asked
for a topic it has not asked for before, every ``missing_refresh_s`` while some are missing (bulk topics not
created yet), and every ``metadata_refresh_s``; not every round (real broker; its clock is the test's)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from autoscaler import LagCollector
from schemas import FleetSettings, Names

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_topics_are_listed_on_new_topics_and_on_a_cadence(
    fleet_settings: FleetSettings, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = 0
    list_topics = AIOKafkaAdminClient.list_topics

    async def counted(self: AIOKafkaAdminClient) -> Any:
        nonlocal listed
        listed += 1
        return await list_topics(self)

    monkeypatch.setattr(AIOKafkaAdminClient, "list_topics", counted)
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    clock = Clock()
    try:
        await admin.create_topics([NewTopic(names.request_topic(m), 1, 1) for m in ("a", "b")])
        async with LagCollector(fleet_settings, metadata_refresh_s=30.0, clock=clock) as c:
            assert c.missing_refresh_s == 5.0  # the default
            assert (await c.collect(["a"]))["a"].topic_exists
            assert listed == 1
            for _ in range(4):  # idle rounds a second apart: a's bulk topic is missing, asked again after 5 s
                clock.now += 1.0
                await c.collect(["a"])
            assert listed == 1
            assert (await c.collect(["a", "b"]))["b"].topic_exists and listed == 2  # a new model: at once
            await admin.create_topics([NewTopic(names.bulk_topic("a"), 1, 1)])  # a's first bulk request
            clock.now += 4.0
            assert not (await c.collect(["a", "b"]))["a"].bulk_partitions and listed == 2
            clock.now += 1.0
            assert len((await c.collect(["a", "b"]))["a"].bulk_partitions) == 1 and listed == 3
    finally:
        await admin.close()
