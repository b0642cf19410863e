"""fleet.client.producer.sender against the session's real broker."""

from __future__ import annotations

from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from fleet.client.producer import RequestSender
from schemas import ENVELOPE_VERSION, BackendUnavailableError, FleetSettings, KafkaSettings, Names
from schemas.constants import HEADER_ENVELOPE_VERSION


async def test_records_go_round_robin_with_key_and_envelope_header(fleet_settings: FleetSettings, names: Names) -> None:
    topic = f"{names.namespace}.sender"
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    sender = RequestSender(fleet_settings.kafka, linger_ms=1)
    await sender.start()
    try:
        delivered = [await sender.send(topic, f"r-{i}", f"v-{i}".encode()) for i in range(6)]
        await sender.flush()
        assert all(d.done() and d.exception() is None for d in delivered)
    finally:
        await sender.stop()
        await sender.stop()  # idempotent
    consumer = AIOKafkaConsumer(topic, **fleet_settings.kafka.client_kwargs(), auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        while len(records) < 6:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    assert Counter(r.partition for r in records) == {0: 2, 1: 2, 2: 2}  # spread evenly, not by key hash
    assert sorted((r.key, r.value) for r in records) == [(f"r-{i}".encode(), f"v-{i}".encode()) for i in range(6)]
    assert all(dict(r.headers)[HEADER_ENVELOPE_VERSION] == str(ENVELOPE_VERSION).encode() for r in records)


async def test_no_broker_is_backend_unavailable() -> None:
    kafka = KafkaSettings(bootstrap="127.0.0.1:9", request_timeout_ms=500)
    sender = RequestSender(kafka)
    with pytest.raises(BackendUnavailableError, match="Kafka unavailable at 127.0.0.1:9"):
        await sender.start()
    with pytest.raises(RuntimeError, match="not started"):
        await sender.send("t", "k", b"v")
