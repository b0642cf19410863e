"""Lanes, retries, dead letters and deadlines against the real broker and Redis (in-process worker)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from fleet.cli.dlq_entries import read_entries, replay, with_replays
from fleet.models.artifacts import build_record
from schemas import (
    BatchingConfig,
    DeadLetter,
    ErrorCode,
    FleetSettings,
    InferenceRequest,
    Lane,
    ModelRecord,
    ModelRegistry,
    Names,
    ReplyAddress,
    ReplyKind,
    Tensor,
    TensorSpec,
    now_ms,
)
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.topics import ensure_model_topics
from tests.relay import running_relay
from workers import Worker, WorkerSettings

from .conftest import make_request, read_replies

pytestmark = pytest.mark.integration


async def produce_to(producer: AIOKafkaProducer, topic: str, requests: Iterable[InferenceRequest]) -> None:
    """Send ``requests`` to ``topic`` the way the gateway does, then flush them in one go."""
    futures = []
    for request in requests:
        key = request.id.encode()
        headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, b"1")]
        futures.append(await producer.send(topic, request.to_bytes(), key=key, headers=headers))
    await producer.flush()
    await asyncio.gather(*futures)


async def read_topic(settings: FleetSettings, topic: str, count: int, timeout_s: float = 20.0) -> list[Any]:
    """The first ``count`` records of ``topic`` (fails after ``timeout_s``)."""
    consumer = AIOKafkaConsumer(topic, **{**settings.kafka.client_kwargs(), "auto_offset_reset": "earliest"})
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=500)
                records.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    return records


# lanes ---------------------------------------------------------------------------------------------
async def test_interactive_is_served_before_a_bulk_backlog(
    worker_settings: WorkerSettings,
    tiny_model: ModelRecord,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    stream: str,
) -> None:
    x = np.ones((1, 16), np.float32)
    # A backlog that takes seconds to drain, so the interactive burst surely arrives while bulk work remains
    # (1,000 records drained in well under a second on a fast machine, before the burst got there).
    bulk = [make_request(stream, x, rid=f"b{i}") for i in range(4000)]
    interactive = [make_request(stream, x, rid=f"i{i}") for i in range(40)]
    # linger 1 s: nothing leaves before flush(), so each burst reaches the broker at once.
    producer = AIOKafkaProducer(**{**fleet_settings.kafka.producer_kwargs(), "linger_ms": 1000})
    await producer.start()
    settings = dataclasses.replace(worker_settings, max_fetch_records=2, bulk_max_batch=4)
    try:
        await produce_to(producer, names.request_topic("tiny", Lane.BULK), bulk)
        async with Worker(settings) as worker:
            await worker.wait_ready(30)
            await read_replies(redis_client, stream, 1)  # the worker is busy with bulk rounds
            await produce_to(producer, names.request_topic("tiny"), interactive)
            replies = await read_replies(redis_client, stream, len(bulk) + len(interactive), timeout_s=60)
    finally:
        await producer.stop()
    order = [r.id for r in replies]
    assert sorted(order) == sorted(r.id for r in [*bulk, *interactive]) and all(r.error is None for r in replies)
    first = min(i for i, rid in enumerate(order) if rid.startswith("i"))
    last = max(i for i, rid in enumerate(order) if rid.startswith("i"))
    bulk_between = sum(1 for rid in order[first:last] if rid.startswith("b"))
    # 20 interactive rounds of 2: served one after the other, not taking turns with bulk rounds of 4
    # (turns would put about 80 bulk replies between the first and the last interactive one).
    assert bulk_between <= 2 * settings.bulk_max_batch, (bulk_between, order[first : last + 1])
    assert last < len(order) - 100, "bulk was drained before the interactive burst was served"
    sample = worker.metrics.registry.get_sample_value
    taken = {lane: sample("fleet_worker_lane_requests_total", {"model": "tiny", "lane": lane}) for lane in Lane}
    assert taken == {"interactive": 40, "bulk": 4000}


async def test_bulk_lane_answers_and_skips_expired_requests(
    worker: Worker, producer: AIOKafkaProducer, names: Names, redis_client: Any, stream: str
) -> None:
    x = np.ones((2, 16), np.float32)
    fresh = make_request(stream, x, rid="fresh")
    expired = make_request(stream, x, rid="expired", deadline_ms=now_ms() - 1)
    await produce_to(producer, names.bulk_topic("tiny"), [expired, fresh])
    replies = {r.id: r for r in await read_replies(redis_client, stream, 2)}
    assert replies["fresh"].error is None and replies["fresh"].outputs[0].shape == (2, 4)
    error = replies["expired"].error
    assert error is not None and error.code is ErrorCode.DEADLINE_EXCEEDED
    assert replies["expired"].compute_ms == 0.0


# retries --------------------------------------------------------------------------------------------
@pytest.fixture
async def flaky_model(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> AsyncIterator[Any]:
    """Registers version N of ``flaky`` whose model fails its first ``fails`` batches; yields the registrar."""
    torch = pytest.importorskip("torch")
    from tests.workers.torchmodels import flaky

    await ensure_model_topics(fleet_settings.kafka, names, "flaky")

    async def register(version: str, fails: int, permanent: bool = False) -> ModelRecord:
        module = flaky()
        module.fails.fill_(fails)
        module.permanent.fill_(int(permanent))
        path = tmp_path / f"flaky-{version}.pt"
        torch.save(module.state_dict(), str(path))
        record = build_record(
            "flaky",
            version,
            path,
            factory="tests.workers.torchmodels:flaky",
            inputs=(TensorSpec("x", "FP32", (-1, 4)),),
            outputs=(TensorSpec("y", "FP32", (-1, 3)),),
            batching=BatchingConfig(max_batch_size=8, max_queue_delay_ms=2),
        )
        await ModelRegistry(redis_client, names).register(record)
        return record

    yield register


def _flaky_request(stream: str, rid: str, version: str, **extra: Any) -> InferenceRequest:
    x = np.ones((1, 4), np.float32)
    return InferenceRequest(
        rid, "flaky", version, (Tensor.from_numpy("x", x),), reply=ReplyAddress(ReplyKind.STREAM, stream), **extra
    )


@pytest.fixture
def retry_settings(worker_settings: WorkerSettings) -> WorkerSettings:
    return dataclasses.replace(
        worker_settings, models=("flaky",), retry_attempts=3, retry_base_ms=50, retry_max_ms=200, retry_jitter=0.0
    )


@pytest.mark.parametrize("lane", list(Lane))
async def test_transient_failure_is_retried_then_answered(
    flaky_model: Any,
    retry_settings: WorkerSettings,
    producer: AIOKafkaProducer,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    stream: str,
    lane: Lane,
) -> None:
    await flaky_model("1", fails=2)
    async with running_relay(fleet_settings, names, redis_client), Worker(retry_settings) as worker:
        await worker.wait_ready(30)
        await produce_to(producer, names.request_topic("flaky", lane), [_flaky_request(stream, "r1", "1")])
        (reply,) = await read_replies(redis_client, stream, 1)
    assert reply.id == "r1" and reply.error is None and reply.outputs[0].shape == (1, 3)
    labels = {"model": "flaky", "version": "1"}
    assert worker.metrics.registry.get_sample_value("fleet_worker_request_retries_total", labels) == 2
    # Both retries waited on the lane's shared retry topic, and came back through the model's request topic.
    retries = await read_topic(fleet_settings, names.retry_topic(lane), 2)
    tries = [InferenceRequest.from_bytes(r.value) for r in retries]
    assert [t.attempt for t in tries] == [2, 3] and all(t.id == "r1" and t.not_before_ms for t in tries)
    assert tries[1].not_before_ms > tries[0].not_before_ms  # type: ignore[operator]
    headers = [dict(r.headers) for r in retries]
    assert [(h["fleet-model"], h["fleet-version"]) for h in headers] == [(b"flaky", b"1")] * 2
    assert [int(h["fleet-not-before"]) for h in headers] == [int(t.not_before_ms or 0) for t in tries]
    relayed = await read_topic(fleet_settings, names.request_topic("flaky", lane), 3)
    assert [InferenceRequest.from_bytes(r.value).attempt for r in relayed] == [1, 2, 3]


async def test_a_retry_carries_the_requests_trace_context_to_its_next_try(
    flaky_model: Any,
    retry_settings: WorkerSettings,
    producer: AIOKafkaProducer,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    stream: str,
) -> None:
    """The retry record keeps the ``traceparent``/``tracestate`` the gateway put on the request's record, so the
    next try (relayed to the request topic unchanged) joins the request's trace instead of starting none."""
    await flaky_model("1", fails=1)
    trace = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("tracestate", b"k=v")]
    request = _flaky_request(stream, "traced", "1")
    headers = [(HEADER_REQUEST_ID, request.id.encode()), (HEADER_ENVELOPE_VERSION, b"1"), *trace]
    async with running_relay(fleet_settings, names, redis_client), Worker(retry_settings) as worker:
        await worker.wait_ready(30)
        topic = names.request_topic("flaky")
        await (await producer.send(topic, request.to_bytes(), key=request.id.encode(), headers=headers))
        (reply,) = await read_replies(redis_client, stream, 1)
    assert reply.id == "traced" and reply.error is None  # answered at the second try
    (retry,) = await read_topic(fleet_settings, names.retry_topic(Lane.INTERACTIVE), 1)
    assert [h for h in retry.headers if h[0] in ("traceparent", "tracestate")] == trace
    _, second = await read_topic(fleet_settings, topic, 2)
    assert InferenceRequest.from_bytes(second.value).attempt == 2
    assert [h for h in second.headers if h[0] in ("traceparent", "tracestate")] == trace


async def test_exhausted_retries_answer_the_error_and_dead_letter(
    flaky_model: Any,
    retry_settings: WorkerSettings,
    producer: AIOKafkaProducer,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    stream: str,
) -> None:
    await flaky_model("1", fails=100)
    async with running_relay(fleet_settings, names, redis_client), Worker(retry_settings) as worker:
        await worker.wait_ready(30)
        await produce_to(producer, names.request_topic("flaky"), [_flaky_request(stream, "doomed", "1")])
        (reply,) = await read_replies(redis_client, stream, 1)
        (record,) = await read_topic(fleet_settings, names.dlq_topic, 1)
    assert reply.error is not None and reply.error.code is ErrorCode.MODEL_ERROR
    assert "failed on all 3 tries" in reply.error.message and "RuntimeError" in reply.error.message
    letter = DeadLetter.from_bytes(record.value)
    assert letter.code is ErrorCode.MODEL_ERROR and letter.reason == reply.error.message
    assert letter.topic == names.request_topic("flaky")  # the last try came back there through the relay
    request = InferenceRequest.from_bytes(letter.value)
    assert request.id == "doomed" and request.attempt == 3


async def test_permanent_failure_and_a_deadline_too_close_are_not_retried(
    flaky_model: Any,
    retry_settings: WorkerSettings,
    producer: AIOKafkaProducer,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    stream: str,
) -> None:
    await flaky_model("1", fails=100, permanent=True)
    await flaky_model("2", fails=100)
    settings = dataclasses.replace(retry_settings, retry_base_ms=5000, retry_max_ms=5000)
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        permanent = _flaky_request(stream, "permanent", "1")
        hurried = _flaky_request(stream, "hurried", "2", deadline_ms=now_ms() + 3000)
        await produce_to(producer, names.request_topic("flaky"), [permanent, hurried])
        replies = {r.id: r for r in await read_replies(redis_client, stream, 2, timeout_s=2.5)}
        (record,) = await read_topic(fleet_settings, names.dlq_topic, 1)
    assert {rid: r.error.code for rid, r in replies.items() if r.error} == {
        "permanent": ErrorCode.MODEL_ERROR,
        "hurried": ErrorCode.MODEL_ERROR,
    }
    assert "ValueError" in replies["permanent"].error.message  # type: ignore[union-attr]
    assert "deadline" in replies["hurried"].error.message  # type: ignore[union-attr]
    letter = DeadLetter.from_bytes(record.value)  # only the transient failure is kept for a replay
    assert InferenceRequest.from_bytes(letter.value).id == "hurried" and "deadline" in letter.reason


async def test_a_retry_whose_deadline_passes_while_it_waits_is_reported_expired(
    flaky_model: Any,
    retry_settings: WorkerSettings,
    producer: AIOKafkaProducer,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    stream: str,
) -> None:
    await flaky_model("1", fails=100)
    async with running_relay(fleet_settings, names, redis_client), Worker(retry_settings) as worker:
        await worker.wait_ready(30)
        # A retry record without the relay's headers: due now (read from its envelope), but its deadline has passed.
        stale = _flaky_request(stream, "stale", "1", attempt=2, not_before_ms=now_ms() - 10, deadline_ms=now_ms() - 5)
        await produce_to(producer, names.retry_topic(Lane.BULK), [stale])
        (reply,) = await read_replies(redis_client, stream, 1)
    assert reply.error is not None and reply.error.code is ErrorCode.DEADLINE_EXCEEDED


async def test_out_of_retries_then_replayed_from_the_dlq_is_answered(
    flaky_model: Any,
    retry_settings: WorkerSettings,
    producer: AIOKafkaProducer,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    stream: str,
) -> None:
    await flaky_model("1", fails=3)  # exactly the three tries fail; the fourth run succeeds
    async with running_relay(fleet_settings, names, redis_client), Worker(retry_settings) as worker:
        await worker.wait_ready(30)
        await produce_to(producer, names.request_topic("flaky", Lane.BULK), [_flaky_request(stream, "again", "1")])
        (failed,) = await read_replies(redis_client, stream, 1)
        assert failed.error is not None and "failed on all 3 tries" in failed.error.message
        await read_topic(fleet_settings, names.dlq_topic, 1)
        entries = await with_replays(redis_client, names, "flaky", await read_entries(fleet_settings, names, "flaky"))
        (entry,) = entries
        assert entry.request is not None and entry.request.attempt == 3 and entry.replays == 0
        (result,) = await replay(fleet_settings, redis_client, names, "flaky", entries)
        assert result.sent and result.topic == names.bulk_topic("flaky")
        replies = await read_replies(redis_client, stream, 2)
    assert replies[1].id == "again" and replies[1].error is None and replies[1].outputs[0].shape == (1, 3)
    (entry,) = await with_replays(redis_client, names, "flaky", await read_entries(fleet_settings, names, "flaky"))
    assert entry.replays == 1
