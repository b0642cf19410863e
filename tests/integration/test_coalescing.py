"""Coalescing in the gateway's publisher: sync requests of one event-loop turn travel as one batch record (only
to workers that all read them) and come back as reply lists; older producers and readers are unaffected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from gateway.publisher import RequestPublisher
from gateway.replies import ReplyListener
from gateway.serviceability import ServiceabilityView
from schemas import (
    FleetSettings,
    InferenceRequest,
    InferenceResponse,
    ModelRecord,
    Names,
    ReplyAddress,
    ReplyKind,
    Tensor,
)
from schemas.constants import HEADER_BATCH, HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.envelopes import InferenceRequestBatch
from workers import Worker
from workers.heartbeat import Heartbeat

pytestmark = pytest.mark.integration


def _request(rid: str, stream: str, value: float) -> InferenceRequest:
    x = np.full((1, 16), value, np.float32)
    return InferenceRequest(rid, "tiny", "1", (Tensor.from_numpy("x", x),), ReplyAddress(ReplyKind.STREAM, stream))


async def _records(settings: FleetSettings, topic: str, count: int, timeout_s: float = 20.0) -> list[Any]:
    """The first ``count`` records of ``topic``, every partition."""
    consumer = AIOKafkaConsumer(topic, **{**settings.kafka.client_kwargs(), "auto_offset_reset": "earliest"})
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


def _members(record: Any) -> int:
    """How many requests a record carries (a batch record says so in its header)."""
    headers = dict(record.headers)
    if HEADER_BATCH not in headers:
        InferenceRequest.from_bytes(record.value)
        return 1
    members = InferenceRequestBatch.members_from_bytes(record.value)
    assert int(headers[HEADER_BATCH]) == len(members)
    return len(members)


@pytest.fixture
async def publisher(fleet_settings: FleetSettings) -> AsyncIterator[RequestPublisher]:
    publisher = RequestPublisher(fleet_settings.kafka, timeout_s=2.0)
    await publisher.start()
    try:
        deadline = time.monotonic() + 20
        while not publisher.connected:
            assert time.monotonic() < deadline, "the publisher did not connect"
            await asyncio.sleep(0.02)
        yield publisher
    finally:
        await publisher.stop()


async def test_one_turns_requests_go_as_one_record_next_to_an_old_producer(
    worker: Worker, publisher: RequestPublisher, fleet_settings: FleetSettings, names: Names, redis_client: Any
) -> None:
    publisher.configure_coalescing("on", lambda model: False)
    stream, old_stream = names.reply_stream("coalescing-gw"), names.reply_stream("old-producer")
    listener = ReplyListener(fleet_settings.redis, stream)
    await listener.start()
    topic = names.request_topic("tiny")
    try:
        deadline = time.monotonic() + 10
        while not listener.healthy:
            assert time.monotonic() < deadline, listener.last_error
            await asyncio.sleep(0.02)
        requests = [_request(f"c-{i}", stream, float(i)) for i in range(6)]
        futures = [listener.expect(r.id) for r in requests]
        # An older producer's single envelope (no reply-list mark) lands among them, to a reader of its own.
        old = _request("old", old_stream, 1.0)
        old_key = old.id.encode()
        old_headers = [(HEADER_REQUEST_ID, old_key), (HEADER_ENVELOPE_VERSION, b"1")]
        await publisher._producer.send_and_wait(topic, old.to_bytes(), key=old_key, headers=old_headers)  # type: ignore[union-attr]
        await asyncio.gather(*(publisher.publish(topic, r, coalesce=True) for r in requests))
        answers: list[InferenceResponse] = [await asyncio.wait_for(f, 20) for f in futures]
    finally:
        await listener.stop()
    for i, answer in enumerate(answers):
        assert answer.id == f"c-{i}" and answer.error is None and answer.outputs[0].shape == (1, 4)
    records = await _records(fleet_settings, topic, 2)
    assert sorted(_members(r) for r in records) == [1, 6]  # the old producer's record, and one batch of six
    deadline = time.monotonic() + 20
    while not (entries := await redis_client.xrange(old_stream)):
        assert time.monotonic() < deadline, "the older producer's request was not answered"
        await asyncio.sleep(0.02)
    ((_, fields),) = entries
    assert set(fields) == {b"r"}  # a reader that never asked for reply lists gets none
    assert InferenceResponse.from_bytes(fields[b"r"]).id == "old"


async def test_auto_sends_single_records_while_a_worker_does_not_read_batches(
    publisher: RequestPublisher,
    tiny_model: ModelRecord,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
) -> None:
    # A worker of this release (heartbeat caps: batch) and one of an older release (no caps) both serve tiny.
    current = Heartbeat(redis_client, names, "w-current", ["tiny"], 5.0, lambda: [], lambda: "cpu")
    assert await current.beat()
    older = names.worker_key("w-older")
    await redis_client.hset(older, mapping={"state": "ready", "models": "tiny", "ts_ms": str(int(time.time() * 1000))})
    await redis_client.zadd(names.workers_key, {"w-older": int(time.time() * 1000)})
    view = ServiceabilityView(redis_client, names, ttl_s=0.05)
    publisher.configure_coalescing("auto", view.reads_batches)
    topic = names.request_topic("tiny")
    stream = names.reply_stream("auto-gw")

    await view.verdict(tiny_model)
    assert not view.reads_batches("tiny")
    await asyncio.gather(*(publisher.publish(topic, _request(f"a-{i}", stream, 0.0), coalesce=True) for i in range(4)))
    await redis_client.delete(older)  # the older worker is gone: every worker of tiny reads batches now
    await asyncio.sleep(0.1)
    await view.verdict(tiny_model)
    assert view.reads_batches("tiny")
    await asyncio.gather(*(publisher.publish(topic, _request(f"b-{i}", stream, 0.0), coalesce=True) for i in range(4)))
    # Not coalesced either: a request that may not be (coalesce=False, e.g. a text-generation model's).
    await asyncio.gather(*(publisher.publish(topic, _request(f"g-{i}", stream, 0.0)) for i in range(2)))

    records = await _records(fleet_settings, topic, 7)
    assert sorted(_members(r) for r in records) == [1, 1, 1, 1, 1, 1, 4]
    singles = [InferenceRequest.from_bytes(r.value) for r in records if HEADER_BATCH not in dict(r.headers)]
    # Every single request of a coalescing gateway still says its reader takes reply lists (older workers
    # ignore that); a request that may not be coalesced does not.
    assert {r.id: r.reply.lists for r in singles} == {**{f"a-{i}": True for i in range(4)}, "g-0": False, "g-1": False}
