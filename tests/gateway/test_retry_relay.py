"""The gateways' retry relay against the real broker and Redis: due retries go to their models' request topics,
a removed model's to the dead letters, and a retry waiting when a relay stops is relayed once by the next one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from schemas import DeadLetter, ErrorCode, FleetSettings, InferenceRequest, Lane, Names, Tensor, now_ms
from schemas.topics import ensure_model_topics
from tests.relay import running_relay
from tests.workers.test_lanes import read_topic
from workers.retries import retry_headers

pytestmark = pytest.mark.integration


@pytest.fixture
async def producer(fleet_settings: FleetSettings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(**fleet_settings.kafka.producer_kwargs())
    await p.start()
    yield p
    await p.stop()


def _retry(rid: str, model: str, due_in_ms: float) -> InferenceRequest:
    x = (Tensor.from_numpy("x", np.ones((1, 4), np.float32)),)
    return InferenceRequest(rid, model, "1", x, attempt=2, not_before_ms=now_ms() + due_in_ms)


async def _send_retries(producer: AIOKafkaProducer, names: Names, lane: Lane, retries: list[InferenceRequest]) -> None:
    """Publish retries the way a worker does (`workers.round`)."""
    futures = [
        await producer.send(
            names.retry_topic(lane), r.to_bytes(), key=r.id.encode(), headers=retry_headers(r.model, r)
        )
        for r in retries
    ]
    await asyncio.gather(*futures)


async def test_due_retries_go_to_their_models_request_topics_and_a_removed_models_to_the_dead_letters(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, producer: AIOKafkaProducer
) -> None:
    for model in ("a", "b"):
        await ensure_model_topics(fleet_settings.kafka, names, model, partitions=1, bulk=True)
    await redis_client.sadd(names.models_key, "a", "b")  # "gone" was removed: only its retry is left
    interactive = [_retry(f"{m}{i}", m, 0) for i in range(20) for m in ("a", "b")]
    bulk = [_retry("bulk-a", "a", 0)]
    await _send_retries(producer, names, Lane.INTERACTIVE, [*interactive, _retry("lost", "gone", 0)])
    await _send_retries(producer, names, Lane.BULK, bulk)
    async with running_relay(fleet_settings, names, redis_client):
        got = {m: await read_topic(fleet_settings, names.request_topic(m), 20) for m in ("a", "b")}
        (relayed_bulk,) = await read_topic(fleet_settings, names.request_topic("a", Lane.BULK), 1)
        (letter_record,) = await read_topic(fleet_settings, names.dlq_topic, 1)
    for model, records in got.items():
        requests = [InferenceRequest.from_bytes(r.value) for r in records]
        assert sorted(r.id for r in requests) == sorted(f"{model}{i}" for i in range(20))  # each once, its own
        assert all(dict(r.headers)["fleet-model"] == model.encode() for r in records)  # produced unchanged
    assert InferenceRequest.from_bytes(relayed_bulk.value).id == "bulk-a"
    letter = DeadLetter.from_bytes(letter_record.value)
    assert letter.code is ErrorCode.MODEL_NOT_FOUND and "'gone' is no longer registered" in letter.reason
    assert InferenceRequest.from_bytes(letter.value).id == "lost" and letter.topic == names.retry_topic()
    assert dict(letter_record.headers)["fleet-model"] == b"gone"


async def test_a_retry_waiting_when_the_relay_stops_is_relayed_once_by_the_next_relay(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, producer: AIOKafkaProducer
) -> None:
    await ensure_model_topics(fleet_settings.kafka, names, "a", partitions=1)
    await redis_client.sadd(names.models_key, "a")
    await _send_retries(producer, names, Lane.INTERACTIVE, [_retry("early", "a", 0)])
    async with running_relay(fleet_settings, names, redis_client):
        await read_topic(fleet_settings, names.request_topic("a"), 1)
        # Due only after this relay stopped: it holds the record, and commits nothing past it.
        await _send_retries(producer, names, Lane.INTERACTIVE, [_retry("late", "a", 1500)])
        await asyncio.sleep(0.3)
    assert len(await read_topic(fleet_settings, names.request_topic("a"), 1)) == 1  # "late" is not there yet
    async with running_relay(fleet_settings, names, redis_client):  # a restarted gateway
        # "early" was committed: relayed again, it would come before "late" (due 1.5 s after it was sent).
        records = await read_topic(fleet_settings, names.request_topic("a"), 2)
    ids = [InferenceRequest.from_bytes(r.value).id for r in records]
    assert ids == ["early", "late"]
