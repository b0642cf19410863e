"""Between rounds the lag collector's probe consumer sleeps: its partitions are paused, and aiokafka's fetch routine
(which walks every assigned partition each time it wakes) is not woken on a short poll timer.

A spy counts the walks of the probe's fetch routine (aiokafka's ``Fetcher._get_actions_per_node``) over a window
between two rounds; with aiokafka's default 200 ms poll it walked all of the partitions about five times a second,
whatever the number of partitions (with 1,000 models, a third of an idle autoscaler's CPU).
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from autoscaler import LagCollector
from schemas import FleetSettings, Names
from tests.fetch_walks import count_fetch_walks

pytestmark = pytest.mark.integration

WINDOW_S = 1.0


async def test_the_probe_consumer_does_not_walk_its_partitions_between_rounds(
    fleet_settings: FleetSettings, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = names.request_topic("m1")
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    walks = count_fetch_walks(monkeypatch)
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
        async with LagCollector(fleet_settings) as collector:
            # Guarded against sleeping its 30 s timer on a fetch already answered (common.fetch_wake).
            assert "_get_actions_per_node" in vars(collector._probe._fetcher)  # type: ignore[union-attr]
            load = await collector.collect_one("m1")
            assert len(load.partitions) == 2  # the probe is assigned the partitions and fetched them
            await asyncio.sleep(0.2)  # a fetch still in flight when the round ended comes back
            before = sum(walks.values())
            await asyncio.sleep(WINDOW_S)
            assert sum(walks.values()) - before <= 1
            again = await collector.collect_one("m1")  # a round after the quiet spell still measures
            assert len(again.partitions) == 2 and collector.last_round.stale == 0
    finally:
        await admin.delete_topics([topic])
        await admin.close()
