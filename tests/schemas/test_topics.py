"""ensure_model_topics: creates a model's topics once, and a topic the broker refuses is an error that names it."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import TopicAlreadyExistsError

from schemas import ErrorCode, FleetError, FleetSettings, Names
from schemas.topics import ensure_model_topics


class _Response:
    def __init__(self, topic_errors: list[tuple[str, int, str | None]]) -> None:
        self.topic_errors = topic_errors


class _FakeAdmin:
    """An admin client whose CreateTopics answer carries the given per-topic error for the first topic."""

    def __init__(self, code: int, message: str | None, **_: Any) -> None:
        self._code = code
        self._message = message

    async def start(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return []

    async def create_topics(self, topics: list[Any]) -> _Response:
        first, *rest = topics
        return _Response([(first.name, self._code, self._message), *((t.name, 0, None) for t in rest)])

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("code", "message", "expected", "named"),
    [
        (37, "Number of partitions is invalid.", ErrorCode.INTERNAL, "InvalidPartitionsError"),
        (38, None, ErrorCode.INTERNAL, "InvalidReplicationFactorError"),
        (29, "not allowed", ErrorCode.INTERNAL, "TopicAuthorizationFailedError"),
        (7, None, ErrorCode.BACKEND_UNAVAILABLE, "RequestTimedOutError"),
    ],
)
async def test_a_topic_the_broker_refuses_raises_naming_it(
    fleet_settings: FleetSettings, names: Names, code: int, message: str | None, expected: ErrorCode, named: str
) -> None:
    def admin(**kwargs: Any) -> _FakeAdmin:
        return _FakeAdmin(code, message, **kwargs)

    with pytest.raises(FleetError) as info:
        await ensure_model_topics(fleet_settings.kafka, names, "m", admin_client=admin)
    first = names.model_topics("m")[0]
    assert info.value.code is expected
    assert repr(first) in info.value.message and named in info.value.message
    if message:
        assert message in info.value.message


async def test_already_existing_topics_are_fine(fleet_settings: FleetSettings, names: Names) -> None:
    def admin(**kwargs: Any) -> _FakeAdmin:
        return _FakeAdmin(TopicAlreadyExistsError.errno, "Topic with this name already exists.", **kwargs)

    await ensure_model_topics(fleet_settings.kafka, names, "m", admin_client=admin)
    # the real broker: a second call finds them all
    await ensure_model_topics(fleet_settings.kafka, names, "m")
    await ensure_model_topics(fleet_settings.kafka, names, "m")
    admin_client = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin_client.start()
    try:
        assert set(names.model_topics("m")) <= set(await admin_client.list_topics())
    finally:
        await admin_client.close()
