"""Batch records on the real broker and Redis: each member answered on its own, in one reply list; a record
committed past only once all its members are answered; a redelivered batch answered once per id."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from gateway.replies import ReplyListener
from schemas import (
    DeadLetter,
    ErrorCode,
    FleetSettings,
    InferenceRequest,
    InferenceResponse,
    Lane,
    ModelRecord,
    Names,
    ReplyAddress,
    ReplyKind,
    Tensor,
    now_ms,
)
from schemas.codec import pack
from schemas.constants import HEADER_BATCH, HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.envelopes import InferenceRequestBatch, unpack_responses
from workers import Worker
from workers.lanes import LaneConsumer

from .conftest import make_request
from .test_lanes import read_topic

pytestmark = pytest.mark.integration


async def _produce_batch(producer: AIOKafkaProducer, topic: str, value: bytes, count: int) -> Any:
    headers = [(HEADER_REQUEST_ID, b"batch"), (HEADER_ENVELOPE_VERSION, b"1"), (HEADER_BATCH, str(count).encode())]
    return await (await producer.send(topic, value, key=b"batch", headers=headers))


async def _entries(redis: Any, stream: str, ids: int, timeout_s: float = 20.0) -> list[dict[bytes, bytes]]:
    """The entries of ``stream`` once they answer at least ``ids`` requests."""
    deadline = time.monotonic() + timeout_s
    while True:
        entries = [fields for _, fields in await redis.xrange(stream)]
        if sum(len(unpack_responses(f[b"rb"])[0]) if b"rb" in f else 1 for f in entries) >= ids:
            return entries
        assert time.monotonic() < deadline, f"{entries} after {timeout_s}s"
        await asyncio.sleep(0.02)


async def test_a_mixed_batch_answers_each_member_in_one_reply_list(
    worker: Worker, producer: AIOKafkaProducer, redis_client: Any, names: Names, fleet_settings: FleetSettings
) -> None:
    stream = names.reply_stream("batch-gw")
    reply = ReplyAddress(ReplyKind.STREAM, stream, lists=True)
    x = np.ones((1, 16), np.float32)

    def member(rid: str, array: np.ndarray = x, **extra: Any) -> InferenceRequest:
        return InferenceRequest(rid, "tiny", "1", (Tensor.from_numpy("x", array),), reply, **extra)

    members = [
        member("ok-1"),
        member("late", deadline_ms=now_ms() - 1000),
        member("wrong-shape", np.ones((1, 3), np.float32)),
        member("ok-2", np.full((2, 16), 2.0, np.float32)),
    ]
    # A fifth member whose tensor does not decode (a producer's bug): answered and dead-lettered on its own.
    broken = {**member("broken").member_wire(), "inputs": [["x", "FP32", [1, 16], b"short"]]}
    value = pack(
        {"v": 1, "kind": "batch", "model": "tiny", "version": "1", "reply": reply.to_wire(), "rl": True,
         "requests": [m.member_wire() for m in members] + [broken]}  # fmt: skip
    )
    record = await _produce_batch(producer, names.request_topic("tiny"), value, 5)

    (entry,) = await _entries(redis_client, stream, 5)
    assert set(entry) == {b"rb"}  # one XADD for the round's replies to this stream
    answers = {r.id: r for r in unpack_responses(entry[b"rb"])[0]}
    assert sorted(answers) == ["broken", "late", "ok-1", "ok-2", "wrong-shape"]
    assert answers["ok-1"].error is None and answers["ok-1"].outputs[0].shape == (1, 4)
    assert answers["ok-2"].error is None and answers["ok-2"].outputs[0].shape == (2, 4)
    for rid, code in (("late", "DEADLINE_EXCEEDED"), ("wrong-shape", "INVALID_INPUT"), ("broken", "INVALID_INPUT")):
        error = answers[rid].error
        assert error is not None and error.code is ErrorCode(code), (rid, error)
    (dead,) = await read_topic(fleet_settings, names.dlq_topic, 1)
    letter = DeadLetter.from_bytes(dead.value)
    assert letter.offset == record.offset and letter.key == b"broken"
    assert HEADER_BATCH not in dict(letter.headers)  # a replay sends the member alone
    with pytest.raises(Exception, match="data bytes"):
        InferenceRequest.from_bytes(letter.value)
    await _committed_past(fleet_settings, names, TopicPartition(record.topic, record.partition), record.offset + 1)


async def _committed_past(
    settings: FleetSettings, names: Names, tp: TopicPartition, offset: int, timeout_s: float = 20.0
) -> None:
    consumer = AIOKafkaConsumer(**settings.kafka.consumer_kwargs(names.worker_group("tiny", Lane.INTERACTIVE)))
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while (await consumer.committed(tp) or 0) < offset:
            assert time.monotonic() < deadline, "the batch record was not committed"
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()


async def test_a_redelivered_batch_record_is_answered_once_per_id(
    worker: Worker, producer: AIOKafkaProducer, redis_client: Any, names: Names, fleet_settings: FleetSettings
) -> None:
    stream = names.reply_stream("batch-gw-2")
    listener = ReplyListener(fleet_settings.redis, stream)
    await listener.start()
    try:
        deadline = time.monotonic() + 10
        while not listener.healthy:  # reading the stream (from its tail): every later reply is seen
            assert time.monotonic() < deadline, listener.last_error
            await asyncio.sleep(0.02)
        requests = [make_request(stream, np.full((1, 16), float(i), np.float32), rid=f"id-{i}") for i in range(3)]
        batch = InferenceRequestBatch("tiny", "1", requests[0].reply, tuple(requests)).to_bytes(reply_lists=True)
        futures = {r.id: listener.expect(r.id) for r in requests}
        for _ in range(2):  # the same record twice: a worker died after answering it, before committing it
            await _produce_batch(producer, names.request_topic("tiny"), batch, 3)
        answers: dict[str, InferenceResponse] = {}
        for rid, future in futures.items():
            answers[rid] = await asyncio.wait_for(future, 20)
        assert all(a.error is None for a in answers.values())
        await _entries(redis_client, stream, 6)  # both copies were answered ...
        assert listener.waiting == 0  # ... and each caller took the first answer only
    finally:
        await listener.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass


async def test_a_round_with_only_some_members_of_a_record_does_not_commit_past_it(
    tiny_model: ModelRecord, producer: AIOKafkaProducer, fleet_settings: FleetSettings, names: Names
) -> None:
    requests = [make_request("s", np.ones((1, 16), np.float32), rid=f"m-{i}") for i in range(3)]
    value = InferenceRequestBatch("tiny", "1", requests[0].reply, tuple(requests)).to_bytes()
    record = await _produce_batch(producer, names.request_topic("tiny"), value, 3)
    lane = LaneConsumer("tiny", Lane.INTERACTIVE, names, fleet_settings.kafka)
    await lane.start(_Rebalance())
    try:
        items: list[Any] = []
        async with asyncio.timeout(20):
            while len(items) < 3:
                items += await lane.take(500, 100)
        tp = TopicPartition(record.topic, record.partition)
        await lane.commit(items[:2])  # a round that took the first two members only (the third carried over)
        assert await lane.consumer.committed(tp) == record.offset
        await lane.commit(items[2:])
        assert await lane.consumer.committed(tp) == record.offset + 1
    finally:
        await lane.stop()
