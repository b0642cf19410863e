"""The worker in process against the real broker and Redis: answers, batching, errors, dead letters, drain."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import (
    DeadLetter,
    ErrorCode,
    FleetSettings,
    InferenceResponse,
    ModelRecord,
    ModelRegistry,
    Names,
    now_ms,
)
from schemas.constants import HEADER_MODEL, HEADER_VERSION
from workers import Worker, WorkerSettings

from .conftest import make_request, produce, read_replies

pytestmark = pytest.mark.integration


def _reference(record: ModelRecord, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(record.artifact, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


async def test_outputs_match_onnxruntime_and_batches_form(
    worker: Worker, tiny_model: ModelRecord, producer: AIOKafkaProducer, names: Names, redis_client: Any, stream: str
) -> None:
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1 + i % 3, 16)).astype(np.float32) for i in range(96)]
    requests = [make_request(stream, x) for x in inputs]
    await produce(producer, names, requests)
    replies = {r.id: r for r in await read_replies(redis_client, stream, len(requests))}
    assert len(replies) == len(requests)
    for request, x in zip(requests, inputs, strict=True):
        response = replies[request.id]
        assert response.error is None, response.error
        (y,) = response.outputs
        assert y.name == "y" and y.datatype == "FP32" and y.shape == (x.shape[0], 4)
        np.testing.assert_allclose(y.to_numpy(), _reference(tiny_model, x), rtol=1e-5, atol=1e-6)
        assert response.worker == worker.id and response.compute_ms >= 0 and response.queue_ms >= 0
    assert max(r.batch_size for r in replies.values()) > 1
    executions = worker.metrics.registry.get_sample_value(
        "fleet_worker_execution_count_total", {"model": "tiny", "version": "1"}
    )
    inferences = worker.metrics.registry.get_sample_value(
        "fleet_worker_inference_count_total", {"model": "tiny", "version": "1"}
    )
    assert inferences == 96 and executions is not None and executions < 96


async def test_heartbeat_reports_ready_then_stopped(
    worker_settings: WorkerSettings, tiny_model: ModelRecord, names: Names, redis_client: Any
) -> None:
    worker = Worker(worker_settings)
    await worker.start()
    try:
        await worker.wait_ready(30)
        fields = await redis_client.hgetall(names.worker_key(worker.id))
        assert fields[b"state"] == b"ready" and fields[b"models"] == b"tiny" and fields[b"device"] == b"cpu"
        topics = {p.rsplit(b":", 1)[0] for p in fields[b"partitions"].split(b",")}
        assert topics == {names.request_topic("tiny").encode(), names.bulk_topic("tiny").encode()}
        assert await redis_client.zscore(names.workers_key, worker.id) is not None
        assert 0 < await redis_client.pttl(names.worker_key(worker.id)) <= 1500
    finally:
        await worker.stop()
        await worker.stop()  # idempotent
    assert (await redis_client.hget(names.worker_key(worker.id), "state")) == b"stopped"
    with pytest.raises(Exception, match="cannot be started"):
        await worker.start()


async def test_undecodable_record_is_dead_lettered_and_the_worker_carries_on(
    worker: Worker,
    fleet_settings: FleetSettings,
    producer: AIOKafkaProducer,
    names: Names,
    redis_client: Any,
    stream: str,
) -> None:
    garbage = b"\x93not an envelope"
    (meta, *_) = await produce(producer, names, [garbage, make_request(stream, np.ones((1, 16), np.float32))])
    (reply,) = await read_replies(redis_client, stream, 1)
    assert reply.error is None
    dlq = AIOKafkaConsumer(
        names.dlq_topic, **{**fleet_settings.kafka.client_kwargs(), "auto_offset_reset": "earliest"}
    )
    await dlq.start()
    try:
        batch = await dlq.getmany(timeout_ms=10_000, max_records=1)
        (record,) = [r for records in batch.values() for r in records]
    finally:
        await dlq.stop()
    letter = DeadLetter.from_bytes(record.value)
    assert dict(record.headers)[HEADER_MODEL] == b"tiny" and HEADER_VERSION not in dict(record.headers)
    assert letter.code is ErrorCode.UNDECODABLE and "msgpack" in letter.reason
    assert letter.value == garbage and letter.worker == worker.id
    assert (letter.topic, letter.partition, letter.offset) == (meta.topic, meta.partition, meta.offset)


async def test_bad_requests_get_error_replies_while_the_rest_succeed(
    worker: Worker, tiny_model: ModelRecord, producer: AIOKafkaProducer, names: Names, redis_client: Any, stream: str
) -> None:
    good = [make_request(stream, np.full((1, 16), i, np.float32), rid=f"good-{i}") for i in range(6)]
    bad_shape = make_request(stream, np.ones((1, 15), np.float32), rid="bad-shape")
    bad_output = make_request(stream, np.ones((1, 16), np.float32), rid="bad-output", outputs=("nope",))
    expired = make_request(stream, np.ones((1, 16), np.float32), rid="expired", deadline_ms=now_ms() - 1)
    unknown_version = make_request(stream, np.ones((1, 16), np.float32), rid="v9", version="9")
    wrong_model = make_request(stream, np.ones((1, 16), np.float32), rid="other", model="other")
    broken = dataclasses.replace(tiny_model, version="2", sha256="0" * 64)  # artifact does not match
    await ModelRegistry(redis_client, names).register(broken)
    broken_version = make_request(stream, np.ones((1, 16), np.float32), rid="broken", version="2")
    everything = [*good[:3], bad_shape, bad_output, expired, unknown_version, wrong_model, broken_version, *good[3:]]
    await produce(producer, names, everything)
    replies = {r.id: r for r in await read_replies(redis_client, stream, len(everything))}
    codes = {rid: (r.error.code if r.error else None) for rid, r in replies.items()}
    assert codes == {
        **{r.id: None for r in good},
        "bad-shape": ErrorCode.INVALID_INPUT,
        "bad-output": ErrorCode.INVALID_INPUT,
        "expired": ErrorCode.DEADLINE_EXCEEDED,
        "v9": ErrorCode.VERSION_NOT_FOUND,
        "other": ErrorCode.MODEL_NOT_FOUND,
        "broken": ErrorCode.MODEL_LOAD_FAILED,
    }
    assert "shape" in replies["bad-shape"].error.message  # type: ignore[union-attr]
    for request in good:
        np.testing.assert_allclose(
            replies[request.id].outputs[0].to_numpy(), _reference(tiny_model, request.inputs[0].to_numpy()), rtol=1e-5
        )


async def test_duplicate_delivery_stores_no_result(
    worker: Worker, producer: AIOKafkaProducer, names: Names, redis_client: Any, stream: str
) -> None:
    """A request published twice runs twice and both replies reach the gateway's stream (the gateway answers
    its caller with the first and drops the second by id); no result key is stored for a sync request."""
    request = make_request(stream, np.ones((1, 16), np.float32), rid="dup")
    # Same key for all three: same partition, so the sentinel is handled after both copies.
    sentinel = dataclasses.replace(make_request(stream, np.ones((2, 16), np.float32)), id="sentinel")
    for item in (request, request):
        await produce(producer, names, [item])
    await producer.send_and_wait(names.request_topic("tiny"), sentinel.to_bytes(), key=b"dup")
    replies = await read_replies(redis_client, stream, 3)  # the sentinel is handled after both copies
    assert Counter(r.id for r in replies) == {"dup": 2, "sentinel": 1}
    assert await redis_client.exists(names.result_key("dup")) == 0


async def _committed(fleet_settings: FleetSettings, names: Names, partitions: list[TopicPartition]) -> dict[int, int]:
    probe = AIOKafkaConsumer(**fleet_settings.kafka.consumer_kwargs(names.worker_group("tiny")))
    await probe.start()
    try:
        return {tp.partition: (await probe.committed(tp)) or 0 for tp in partitions}
    finally:
        await probe.stop()


async def test_stop_drains_and_commits_exactly_what_was_answered(
    worker_settings: WorkerSettings,
    tiny_model: ModelRecord,
    fleet_settings: FleetSettings,
    producer: AIOKafkaProducer,
    names: Names,
    redis_client: Any,
    stream: str,
) -> None:
    worker = Worker(worker_settings)
    await worker.start()
    await worker.wait_ready(30)
    requests = [make_request(stream, np.ones((1, 16), np.float32), rid=f"d{i}") for i in range(300)]
    sent = asyncio.create_task(produce(producer, names, requests))
    await read_replies(redis_client, stream, 1)
    await worker.stop()  # mid-stream: finish the round in hand, deliver, commit, leave
    metas = await sent
    answered = {InferenceResponse.from_bytes(fields[b"r"]).id for _, fields in await redis_client.xrange(stream)}
    partitions = sorted({TopicPartition(m.topic, m.partition) for m in metas}, key=lambda tp: tp.partition)
    committed = await _committed(fleet_settings, names, partitions)
    for request, meta in zip(requests, metas, strict=True):
        assert (meta.offset < committed[meta.partition]) == (request.id in answered), (request.id, meta, committed)
    assert answered, "nothing was answered before the stop"

    # A new worker in the group starts after the committed records and answers the rest exactly once.
    async with Worker(worker_settings) as second:
        await second.wait_ready(30)
        replies = await read_replies(redis_client, stream, len(requests))
    counts = Counter(r.id for r in replies)
    assert set(counts) == {r.id for r in requests} and set(counts.values()) == {1}
    assert await _committed(fleet_settings, names, partitions) == {
        p: max(m.offset for m in metas if m.partition == p) + 1 for p in committed
    }


async def test_run_until_stopped_returns_after_request_stop(
    worker_settings: WorkerSettings, tiny_model: ModelRecord
) -> None:
    worker = Worker(worker_settings)
    await worker.start()
    runner = asyncio.create_task(worker.run_until_stopped())
    await worker.wait_ready(30)
    started = time.monotonic()
    worker.request_stop()
    await asyncio.wait_for(runner, 15)
    assert time.monotonic() - started < 10
