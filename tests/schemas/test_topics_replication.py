"""The replication factor of new topics follows the cluster unless set; the Kafka settings that choose it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from schemas import FleetSettings, KafkaSettings, Names
from schemas.settings import SettingsError
from schemas.topics import cluster_info, ensure_model_topics


@pytest.mark.parametrize(
    ("setting", "brokers", "expected"),
    [(0, 1, 1), (0, 2, 2), (0, 3, 3), (0, 9, 3), (2, 9, 2), (1, 3, 1), (5, 3, 5)],
)
def test_replication_follows_the_broker_count_unless_set(setting: int, brokers: int, expected: int) -> None:
    assert KafkaSettings(replication_factor=setting).replication_for(brokers) == expected


@pytest.mark.parametrize(
    ("field", "value"), [("replication_factor", -1), ("broker", "redpanda"), ("idempotence", "yes")]
)
def test_bad_kafka_settings_are_refused(field: str, value: Any) -> None:
    with pytest.raises(SettingsError, match=f"FLEET_KAFKA_{field.upper()}"):
        KafkaSettings(**{field: value})


@pytest.mark.parametrize(
    ("idempotence", "broker", "cluster_id", "expected"),
    [
        ("auto", "auto", "tansu_cluster", False),
        ("auto", "auto", "MkU3OEVBNTcwNTJENDM2Qg", True),
        ("auto", "kafka", "tansu_cluster", True),
        ("auto", "embedded", None, False),
        ("on", "embedded", "tansu_cluster", True),
        ("off", "kafka", None, False),
    ],
)
def test_idempotence_is_on_unless_the_broker_is_the_embedded_one(
    idempotence: str, broker: str, cluster_id: str | None, expected: bool
) -> None:
    kafka = KafkaSettings(idempotence=idempotence, broker=broker)
    assert kafka.idempotent(cluster_id) is expected
    assert ("enable_idempotence" in kafka.producer_kwargs(idempotent=kafka.idempotent(cluster_id))) is expected


class _RecordingAdmin:
    """An admin client that records the topics it is asked to create (and creates none)."""

    created: list[Any] = []

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return []

    async def create_topics(self, topics: list[Any]) -> Any:
        _RecordingAdmin.created.extend(topics)
        return type("Response", (), {"topic_errors": [(t.name, 0, None) for t in topics]})()

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("setting", [0, 2])
async def test_new_topics_get_the_clusters_replication_factor(
    fleet_settings: FleetSettings, names: Names, setting: int
) -> None:
    kafka = dataclasses.replace(fleet_settings.kafka, replication_factor=setting)
    brokers = (await cluster_info(kafka)).brokers
    _RecordingAdmin.created = []
    await ensure_model_topics(kafka, names, "m", admin_client=_RecordingAdmin)
    expected = setting or min(3, brokers)
    assert _RecordingAdmin.created and {t.replication_factor for t in _RecordingAdmin.created} == {expected}


async def test_the_session_cluster_reports_its_brokers(fleet_settings: FleetSettings) -> None:
    info = await cluster_info(fleet_settings.kafka)
    assert info.brokers >= 1 and info.cluster_id
