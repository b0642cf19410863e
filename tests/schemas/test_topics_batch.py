"""ensure_topics_for_models: the topics of many models with one admin client, one listing and one CreateTopics
per batch of topics; a topic the broker refuses fails its model only."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from schemas import ErrorCode, FleetSettings, Names
from schemas.topics import ensure_topics_for_models, shared_topics


class _CountingAdmin(AIOKafkaAdminClient):  # type: ignore[misc]  # aiokafka is untyped
    """The real admin client, counting the clients built and the requests sent."""

    built = 0
    listings = 0
    creates: list[int] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        type(self).built += 1

    async def list_topics(self) -> Any:
        type(self).listings += 1
        return await super().list_topics()

    async def create_topics(self, new_topics: list[Any], *args: Any, **kwargs: Any) -> Any:
        type(self).creates.append(len(new_topics))
        return await super().create_topics(new_topics, *args, **kwargs)


@pytest.fixture
def counting() -> type[_CountingAdmin]:
    _CountingAdmin.built, _CountingAdmin.listings, _CountingAdmin.creates = 0, 0, []
    return _CountingAdmin


@pytest.mark.integration
async def test_many_models_take_one_client_one_listing_and_one_create_per_batch(
    fleet_settings: FleetSettings, names: Names, counting: type[_CountingAdmin]
) -> None:
    partitions: dict[str, int | None] = {f"m{i}": (2 if i % 2 else None) for i in range(30)}
    per_model = len(names.model_topics("m0"))
    outcome = await ensure_topics_for_models(
        fleet_settings.kafka, names, partitions, batch_topics=40, admin_client=counting
    )
    assert not outcome.failed
    assert {m: len(t) for m, t in outcome.created.items()} == dict.fromkeys(partitions, per_model)
    assert (counting.built, counting.listings) == (1, 1)
    total = 30 * per_model + len(shared_topics(fleet_settings.kafka, names))  # the shared ones come along once
    assert counting.creates == [40] * (total // 40) + ([total % 40] if total % 40 else [])
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        described = await admin.describe_topics([names.request_topic("m1"), names.request_topic("m2"), names.dlq_topic])
        listed = set(await admin.list_topics())
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    assert counts == {
        names.request_topic("m1"): 2,
        names.request_topic("m2"): fleet_settings.kafka.partitions,
        names.dlq_topic: fleet_settings.kafka.dlq_partitions,
    }
    assert not any(names.bulk_model(topic) for topic in listed)  # bulk topics come on first use

    again = await ensure_topics_for_models(fleet_settings.kafka, names, partitions, admin_client=counting)
    assert again.created == {} and again.failed == {}
    assert (counting.built, counting.listings, sum(counting.creates)) == (2, 2, total)


class _Response:
    def __init__(self, topic_errors: list[tuple[str, int, str | None]]) -> None:
        self.topic_errors = topic_errors


class _RefusingAdmin:
    """An admin client that refuses every topic whose name contains 'bad' (InvalidPartitions)."""

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return []

    async def create_topics(self, topics: list[Any]) -> _Response:
        return _Response([(t.name, 37 if "bad" in t.name else 0, None) for t in topics])

    async def close(self) -> None:
        pass


async def test_a_refused_topic_fails_its_model_and_no_other(fleet_settings: FleetSettings, names: Names) -> None:
    outcome = await ensure_topics_for_models(
        fleet_settings.kafka, names, {"good": None, "bad": None, "fine": 3}, batch_topics=3, admin_client=_RefusingAdmin
    )
    assert set(outcome.created) == {"good", "fine"} and set(outcome.failed) == {"bad"}
    error = outcome.failed["bad"]
    assert error.code is ErrorCode.INTERNAL and "InvalidPartitionsError" in error.message and "bad" in error.message
