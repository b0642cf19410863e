"""DeadLetterWriter against the real broker: the dead letters of every model share the namespace's topic, each with
its model (and, when the request decodes, its version) in the headers, and ``fleet dlq`` reads one model's."""

from __future__ import annotations

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from fleet.cli.dlq_entries import read_entries
from schemas import DeadLetter, ErrorCode, FleetSettings, Names
from schemas.constants import HEADER_MODEL, HEADER_VERSION
from schemas.topics import ensure_model_topics
from workers.deadletter import DeadLetterWriter

from .conftest import make_request

pytestmark = pytest.mark.integration


def _letter(names: Names, model: str, value: bytes, offset: int) -> DeadLetter:
    return DeadLetter(ErrorCode.MODEL_ERROR, f"{model} failed", names.request_topic(model), 0, offset, value)


async def test_two_models_share_the_topic_with_model_and_version_headers(
    fleet_settings: FleetSettings, names: Names
) -> None:
    await ensure_model_topics(fleet_settings.kafka, names, "a")  # the namespace's shared topics come with it
    stream = names.reply_stream("dl")
    request_a = make_request(stream, np.ones((1, 16), np.float32), model="a", rid="ra")
    request_b = make_request(stream, np.ones((1, 16), np.float32), model="b", rid="rb")
    producer = AIOKafkaProducer(**fleet_settings.kafka.producer_kwargs())
    await producer.start()
    try:
        writer = DeadLetterWriter(producer, names)
        await writer.send("a", [_letter(names, "a", request_a.to_bytes(), 1), _letter(names, "a", b"\xc1", 2)])
        await writer.send("b", [_letter(names, "b", request_b.to_bytes(), 3)])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        names.dlq_topic, **fleet_settings.kafka.client_kwargs(), auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    headers: dict[int, dict[str, bytes]] = {}
    try:
        while len(headers) < 3:
            for records in (await consumer.getmany(timeout_ms=5000)).values():
                for record in records:
                    headers[DeadLetter.from_bytes(record.value).offset] = dict(record.headers)
    finally:
        await consumer.stop()
    assert {offset: (h[HEADER_MODEL], h.get(HEADER_VERSION)) for offset, h in headers.items()} == {
        1: (b"a", request_a.version.encode()),
        2: (b"a", None),  # the request does not decode: no version
        3: (b"b", request_b.version.encode()),
    }
    of_a = await read_entries(fleet_settings, names, "a")
    of_b = await read_entries(fleet_settings, names, "b")
    assert sorted(e.letter.offset for e in of_a if e.letter) == [1, 2]
    assert [e.request.id for e in of_b if e.request] == ["rb"]
