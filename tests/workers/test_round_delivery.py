"""A round's delivery against a Redis of its own that runs out of memory or goes away: nothing is lost,
nothing is committed early, and each step of the round (model runs, dead letters, retries) happens once.

These tests start their own Redis (the session's one is shared with every other test), so they can fill it,
stop it and start it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import LocalRedis
from fleet.models.artifacts import build_record
from schemas import (
    BatchingConfig,
    ErrorCode,
    FleetSettings,
    InferenceRequest,
    InferenceResponse,
    ModelRecord,
    ModelRegistry,
    Names,
    RedisSettings,
    ReplyAddress,
    ReplyKind,
    Tensor,
    TensorSpec,
    now_ms,
)
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.topics import ensure_model_topics
from workers import BackendDownError, Worker, WorkerSettings
from workers.replies import ReplyWriter

from .conftest import make_request, read_replies

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis() -> Iterator[LocalRedis]:
    """A Redis server for this test alone."""
    server = LocalRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def own_client(own_redis: LocalRedis) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


@pytest.fixture
def own_settings(fleet_settings: FleetSettings, own_redis: LocalRedis) -> FleetSettings:
    return dataclasses.replace(fleet_settings, redis=RedisSettings(url=own_redis.url))


async def _fill(client: Any) -> None:
    """Make every write fail with OOM (``maxmemory`` below what is used, ``noeviction``)."""
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", "1")


async def _free(client: Any) -> None:
    await client.config_set("maxmemory", "0")


async def _evalsha_refusals(client: Any) -> int:
    """EVALSHA calls the server refused or failed (only reply delivery runs scripts here)."""
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("rejected_calls", 0)) + int(stats.get("failed_calls", 0))


async def _wait_for(predicate: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


async def _committed(settings: FleetSettings, names: Names, model: str, topic: str) -> int:
    """Records of ``topic`` the model's interactive group has committed (all partitions)."""
    consumer = AIOKafkaConsumer(**settings.kafka.consumer_kwargs(names.worker_group(model)))
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        return sum([(await consumer.committed(tp)) or 0 for tp in partitions])
    finally:
        await consumer.stop()


async def _count(settings: FleetSettings, topic: str) -> int:
    """Records in ``topic`` now (sum of the end offsets)."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs())
    await consumer.start()
    try:
        await consumer.topics()  # the metadata of every topic: partition counts differ (shared topics)
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def _produce_together(producer: AIOKafkaProducer, topic: str, values: list[bytes]) -> None:
    """Produce ``values`` to one partition in one batch (so the worker takes them in one round)."""
    futures = []
    for value in values:
        headers = [(HEADER_REQUEST_ID, b"round"), (HEADER_ENVELOPE_VERSION, b"1")]
        futures.append(await producer.send(topic, value, key=b"round", headers=headers))
    await producer.flush()
    await asyncio.gather(*futures)


async def _register_tiny(client: Any, names: Names, tmp_path: Path, version: str) -> ModelRecord:
    record = build_record(
        "tiny",
        version,
        tiny_mlp(tmp_path / f"tiny-{version}.onnx"),
        batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=20),
    )
    await ModelRegistry(client, names).register(record)
    return record


def _worker_settings(settings: FleetSettings, tmp_path: Path, models: tuple[str, ...], **extra: Any) -> WorkerSettings:
    return WorkerSettings(
        models=models,
        fleet=settings,
        heartbeat_interval_s=0.5,
        drain_timeout_s=10,
        cache_dir=str(tmp_path / "artifact-cache"),
        **extra,
    )


# Redis server errors that pass are retried, not taken as permanent ----------------------------------------------------
async def test_reply_writer_retries_oom_and_keeps_wrongtype_permanent(own_client: Any, names: Names) -> None:
    writer = ReplyWriter(own_client, names)
    stream = names.reply_stream("gw")
    address = ReplyAddress(ReplyKind.STREAM, stream)
    await _fill(own_client)
    with pytest.raises(BackendDownError, match="OOM|memory") as info:
        await writer.deliver([(address, InferenceResponse("a", "m", "1", worker="w", batch_size=1))])
    assert info.value.retriable
    assert await own_client.xlen(stream) == 0
    await _free(own_client)
    assert await writer.deliver([(address, InferenceResponse("a", "m", "1", worker="w", batch_size=1))]) == 1
    assert await own_client.xlen(stream) == 1
    # A reply stream of the wrong type cannot be fixed by retrying: reported, the round goes on.
    await own_client.set(names.reply_stream("wrong"), b"x")
    wrong = ReplyAddress(ReplyKind.STREAM, names.reply_stream("wrong"))
    assert await writer.deliver([(wrong, InferenceResponse("b", "m", "1", worker="w", batch_size=1))]) == 0


async def test_reply_refused_for_memory_is_delivered_later_and_committed_only_then(
    own_settings: FleetSettings,
    own_client: Any,
    names: Names,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    await _register_tiny(own_client, names, tmp_path, "1")
    await ensure_model_topics(own_settings.kafka, names, "tiny")
    stream = names.reply_stream("test-gw")
    topic = names.request_topic("tiny")
    async with Worker(_worker_settings(own_settings, tmp_path, ("tiny",))) as worker:
        await worker.wait_ready(30)
        await _fill(own_client)
        request = make_request(stream, np.ones((1, 16), np.float32), rid="oom")
        await _produce_together(producer, topic, [request.to_bytes()])
        before = await _evalsha_refusals(own_client)
        # Three refused deliveries: the round is being retried, not given up.
        await _wait_for(lambda: _evalsha_refusals_at_least(own_client, before + 3), "three refused deliveries")
        assert await _committed(own_settings, names, "tiny", topic) == 0
        assert await own_client.exists(names.result_key("oom")) == 0
        await _free(own_client)
        (reply,) = await read_replies(own_client, stream, 1)
        assert reply.id == "oom" and reply.error is None
        await _wait_for(lambda: _committed_at_least(own_settings, names, topic, 1), "the commit")
        assert worker.id


async def _evalsha_refusals_at_least(client: Any, count: int) -> bool:
    return await _evalsha_refusals(client) >= count


async def _committed_at_least(settings: FleetSettings, names: Names, topic: str, count: int) -> bool:
    return await _committed(settings, names, "tiny", topic) >= count


# Each step of a round happens once, however often delivery is retried -------------------------------------------------
def _retried(caplog: pytest.LogCaptureFixture, step: str) -> int:
    """Log lines of the consumer retrying ``step`` of a round."""
    return sum(f": {step} failed (" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)


async def _restart(server: LocalRedis) -> None:
    """Start ``server`` again on its port (memory-only: it comes back empty)."""
    await asyncio.to_thread(server.start)


async def test_a_retried_delivery_produces_each_dead_letter_and_retry_once(
    own_settings: FleetSettings,
    own_redis: LocalRedis,
    own_client: Any,
    names: Names,
    producer: AIOKafkaProducer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch = pytest.importorskip("torch")
    from tests.workers.torchmodels import flaky

    caplog.set_level(logging.WARNING, "fleet.workers")
    await ensure_model_topics(own_settings.kafka, names, "flaky")
    module = flaky()
    module.fails.fill_(1)  # the first batch fails transiently: its request goes to the retry topic
    path = tmp_path / "flaky.pt"
    torch.save(module.state_dict(), str(path))
    record = build_record(
        "flaky",
        "1",
        path,
        factory="tests.workers.torchmodels:flaky",
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP32", (-1, 3)),),
        batching=BatchingConfig(max_batch_size=8, max_queue_delay_ms=2),
    )
    await ModelRegistry(own_client, names).register(record)
    stream = names.reply_stream("test-gw")
    reply = ReplyAddress(ReplyKind.STREAM, stream)
    x = (Tensor.from_numpy("x", np.ones((1, 4), np.float32)),)
    retried = InferenceRequest("retried", "flaky", "1", x, reply=reply)
    expired = InferenceRequest("expired", "flaky", "1", x, reply=reply, deadline_ms=now_ms() - 1)
    settings = _worker_settings(
        own_settings, tmp_path, ("flaky",), retry_attempts=3, retry_base_ms=50, retry_max_ms=200, retry_jitter=0.0
    )
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        own_redis.stop()  # replies cannot be stored: the round's delivery is retried
        topic = names.request_topic("flaky")
        await _produce_together(producer, topic, [b"\x93not an envelope", retried.to_bytes(), expired.to_bytes()])
        await _wait_for(_async(lambda: _retried(caplog, "deliver") >= 3), "three delivery retries")
        await _restart(own_redis)
        # The retry waits on the shared retry topic (no relay runs here: tests/workers/test_lanes.py has one).
        (reply,) = await read_replies(own_client, stream, 1)
        assert reply.id == "expired" and reply.error is not None
        assert reply.error.code is ErrorCode.DEADLINE_EXCEEDED
        labels = {"model": "flaky", "version": "1"}
        assert worker.metrics.registry.get_sample_value("fleet_worker_request_retries_total", labels) == 1
    assert await _count(own_settings, names.dlq_topic) == 1
    assert await _count(own_settings, names.retry_topic()) == 1


async def test_a_round_resumed_after_a_registry_outage_runs_each_request_once(
    own_settings: FleetSettings,
    own_redis: LocalRedis,
    own_client: Any,
    names: Names,
    producer: AIOKafkaProducer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "fleet.workers")
    await _register_tiny(own_client, names, tmp_path, "1")  # the default: preloaded, its record cached
    await ensure_model_topics(own_settings.kafka, names, "tiny")
    stream = names.reply_stream("test-gw")
    first = make_request(stream, np.ones((1, 16), np.float32), rid="v1")
    second = make_request(stream, np.ones((1, 16), np.float32), rid="v2", version="2")
    async with Worker(_worker_settings(own_settings, tmp_path, ("tiny",))) as worker:
        await worker.wait_ready(30)
        own_redis.stop()  # version 2's record cannot be read: the round stops half-way (version 1 ran)
        await _produce_together(producer, names.request_topic("tiny"), [first.to_bytes(), second.to_bytes()])
        await _wait_for(_async(lambda: _retried(caplog, "handle") >= 3), "three handle retries")
        await _restart(own_redis)
        await _register_tiny(own_client, names, tmp_path, "2")
        replies = {r.id: r for r in await read_replies(own_client, stream, 2)}
        assert replies["v1"].error is None and replies["v2"].error is None
        ran = {
            version: worker.metrics.registry.get_sample_value(
                "fleet_worker_inference_count_total", {"model": "tiny", "version": version}
            )
            for version in ("1", "2")
        }
    assert ran == {"1": 1, "2": 1}


def _async(check: Any) -> Any:
    async def predicate() -> bool:
        return bool(check())

    return predicate
