"""Bulk-lane topics on first use: ``ensure_bulk_topic`` and ``BulkTopics`` against the real broker (a missing topic
is created with its request topic's partition count, never auto-created with the broker's default)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from schemas import FleetSettings, Names
from schemas.topics import BulkTopics, ensure_bulk_topic, ensure_model_topics, topic_partitions

pytestmark = pytest.mark.integration


class _CountingAdmin(AIOKafkaAdminClient):  # type: ignore[misc]  # aiokafka is untyped
    """The real admin client, counting CreateTopics requests."""

    creates = 0

    async def create_topics(self, new_topics: list[Any], *args: Any, **kwargs: Any) -> Any:
        type(self).creates += 1
        return await super().create_topics(new_topics, *args, **kwargs)


async def test_registration_creates_the_request_topic_only_and_the_bulk_topic_comes_with_its_count(
    fleet_settings: FleetSettings, names: Names
) -> None:
    kafka = fleet_settings.kafka
    await ensure_model_topics(kafka, names, "hot", partitions=3)
    await ensure_model_topics(kafka, names, "plain")
    request, bulk = names.request_topic("hot"), names.bulk_topic("hot")
    counts = await topic_partitions(kafka, [request, bulk, names.request_topic("plain"), names.bulk_topic("plain")])
    assert counts == {request: 3, names.request_topic("plain"): kafka.partitions}

    assert await ensure_bulk_topic(kafka, names, "hot") is True
    assert await topic_partitions(kafka, [bulk]) == {bulk: 3}  # the request topic's count, not the default
    assert await ensure_bulk_topic(kafka, names, "hot") is False


async def test_a_bulk_topic_without_a_request_topic_gets_the_default_and_nothing_else_is_created(
    fleet_settings: FleetSettings, names: Names
) -> None:
    kafka = fleet_settings.kafka
    assert await ensure_bulk_topic(kafka, names, "orphan") is True
    request, bulk = names.request_topic("orphan"), names.bulk_topic("orphan")
    assert await topic_partitions(kafka, [request, bulk]) == {bulk: kafka.partitions}


async def test_bulk_topics_creates_once_for_concurrent_first_sends_and_ignores_other_topics(
    fleet_settings: FleetSettings, names: Names
) -> None:
    kafka = fleet_settings.kafka
    await ensure_model_topics(kafka, names, "m", partitions=1)
    _CountingAdmin.creates = 0
    topics = BulkTopics(kafka, names, admin_client=_CountingAdmin)
    bulk = names.bulk_topic("m")
    await asyncio.gather(*(topics.ensure(bulk) for _ in range(5)))
    assert _CountingAdmin.creates == 1
    await topics.ensure(bulk)  # known now: no admin call at all
    assert _CountingAdmin.creates == 1
    missing_interactive = names.request_topic("never-registered")
    await topics.ensure(missing_interactive)  # not a bulk topic: left alone (registration creates those)
    await topics.ensure(names.dlq_topic)
    assert _CountingAdmin.creates == 1
    assert await topic_partitions(kafka, [bulk, missing_interactive]) == {bulk: 1}
