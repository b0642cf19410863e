"""A pipelined worker against real servers: a stop with two rounds in flight delivers and commits both, and a
crash between delivery and commit redelivers only the rounds not committed (answered once all the same). Each
test runs on both worker modes: a consumer per model, and the pool (the same pipeline per model).

Rounds are held in delivery by a Redis of this module's own that refuses writes (out of memory) until the test
frees it, so the rounds in flight are known when the worker stops or crashes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import LocalRedis
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, FleetSettings, InferenceResponse, ModelRegistry, Names, RedisSettings
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerError, WorkerSettings
from workers.handler import Fetched
from workers.lanes import LaneConsumer
from workers.pool import PoolConsumer
from workers.round import RoundPipeline

from .conftest import make_request, produce, read_replies

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis() -> Iterator[LocalRedis]:
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


@pytest.fixture(params=["models", "pool"])
async def settings(
    request: pytest.FixtureRequest,
    fleet_settings: FleetSettings,
    own_redis: LocalRedis,
    own_client: Any,
    names: Names,
    tmp_path: Path,
) -> WorkerSettings:
    """A worker of ``tiny`` (registered) on this module's Redis."""
    fleet = dataclasses.replace(fleet_settings, redis=RedisSettings(url=own_redis.url))
    record = build_record(
        "tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"), batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=5)
    )
    await ModelRegistry(own_client, names).register(record)
    await ensure_model_topics(fleet.kafka, names, "tiny")
    return WorkerSettings(
        models=("tiny",),
        fleet=fleet,
        heartbeat_interval_s=0.5,
        drain_timeout_s=15,
        pipeline_depth=2,
        cache_dir=str(tmp_path / "artifact-cache"),
        mode=request.param,
        measure_footprint=False,
    )


def _pipeline(worker: Worker) -> RoundPipeline:
    """The pipeline of tiny's rounds, in either mode."""
    if worker.pool is not None:
        pipeline = worker.pool.models["tiny"].pipeline
        assert pipeline is not None
        return pipeline
    return worker.consumers[0].pipeline


def _completed(worker: Worker) -> int:
    stats = worker.pool.models["tiny"].stats if worker.pool is not None else worker.consumers[0].stats
    return stats.completed


async def _wait_for(predicate: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


async def _committed(settings: WorkerSettings, names: Names) -> int:
    """Records of tiny's interactive topic its group has committed (all partitions)."""
    kafka = settings.fleet.kafka
    consumer = AIOKafkaConsumer(**kafka.consumer_kwargs(names.worker_group("tiny")))
    await consumer.start()
    try:
        topic = names.request_topic("tiny")
        partitions = [TopicPartition(topic, p) for p in range(kafka.partitions)]
        return sum([(await consumer.committed(tp)) or 0 for tp in partitions])
    finally:
        await consumer.stop()


async def _refusals(client: Any) -> int:
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("rejected_calls", 0)) + int(stats.get("failed_calls", 0))


async def _two_rounds_in_flight(
    worker: Worker, client: Any, producer: AIOKafkaProducer, names: Names, stream: str
) -> None:
    """Make Redis refuse writes, then put two rounds in delivery: round ``b`` and, after it, round ``c``."""
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", "1")
    pipeline = _pipeline(worker)
    before = await _refusals(client)
    await produce(producer, names, [make_request(stream, np.ones((1, 16), np.float32), rid="b")])

    async def delivering_b() -> bool:
        return await _refusals(client) > before

    await _wait_for(delivering_b, "round b refused by Redis")
    await produce(producer, names, [make_request(stream, np.ones((1, 16), np.float32), rid="c")])

    async def both_delivering() -> bool:
        return pipeline.in_flight == 2 and pipeline.model_idle.is_set()

    await _wait_for(both_delivering, "rounds b and c both past the model, in delivery")


async def _free(client: Any) -> None:
    await client.config_set("maxmemory", "0")


async def test_stop_with_two_rounds_in_flight_delivers_and_commits_both(
    settings: WorkerSettings, own_client: Any, producer: AIOKafkaProducer, names: Names, stream: str
) -> None:
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        await _two_rounds_in_flight(worker, own_client, producer, names, stream)
        worker.request_stop()  # what SIGTERM does
        stopping = asyncio.create_task(worker.run_until_stopped())
        await asyncio.sleep(0.3)
        assert not stopping.done()  # draining: the rounds in hand are still being delivered
        assert await _committed(settings, names) == 0
        await _free(own_client)
        await asyncio.wait_for(stopping, 20)
    replies = await read_replies(own_client, stream, 2)
    assert sorted(r.id for r in replies) == ["b", "c"] and all(r.error is None for r in replies)
    assert await _committed(settings, names) == 2


async def test_a_crash_between_delivery_and_commit_redelivers_only_what_was_not_committed(
    settings: WorkerSettings,
    own_client: Any,
    producer: AIOKafkaProducer,
    names: Names,
    stream: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commit_soon, pool_commit = LaneConsumer.commit_soon, PoolConsumer._commit

    async def crash_on_the_commit_of_b(fetched: Sequence[Fetched], commit: Callable[[], Awaitable[None]]) -> None:
        if any(f.request is not None and f.request.id == "b" for f in fetched):
            # Once c, the round after b, is delivered too: were c committed now, b's records would be skipped.
            async def c_delivered() -> bool:
                entries = await own_client.xrange(stream)
                return any(InferenceResponse.from_bytes(fields[b"r"]).id == "c" for _, fields in entries)

            await _wait_for(c_delivered, "round c delivered")
            await asyncio.sleep(0.2)
            raise RuntimeError("the worker died between delivery and commit")
        await commit()

    async def lane_commit(self: LaneConsumer, fetched: Sequence[Fetched]) -> None:
        await crash_on_the_commit_of_b(fetched, lambda: commit_soon(self, fetched))

    async def pool_commit_(self: PoolConsumer, model: str, group: str, fetched: Sequence[Fetched]) -> None:
        await crash_on_the_commit_of_b(fetched, lambda: pool_commit(self, model, group, fetched))

    monkeypatch.setattr(LaneConsumer, "commit_soon", lane_commit)
    monkeypatch.setattr(PoolConsumer, "_commit", pool_commit_)
    async with Worker(settings) as first:
        await first.wait_ready(30)
        await produce(producer, names, [make_request(stream, np.ones((1, 16), np.float32), rid="a")])
        await read_replies(own_client, stream, 1)

        async def a_committed() -> bool:
            return await _committed(settings, names) == 1

        await _wait_for(a_committed, "round a committed")
        await _two_rounds_in_flight(first, own_client, producer, names, stream)
        await _free(own_client)  # b and c are delivered; b's commit crashes, c's must not skip b
        with pytest.raises(WorkerError, match="between delivery and commit"):
            await asyncio.wait_for(first.run_until_stopped(), 20)
    assert await _committed(settings, names) == 1  # c, delivered, committed nothing
    assert sorted(r.id for r in await read_replies(own_client, stream, 3)) == ["a", "b", "c"]
    monkeypatch.setattr(LaneConsumer, "commit_soon", commit_soon)
    monkeypatch.setattr(PoolConsumer, "_commit", pool_commit)

    async with Worker(dataclasses.replace(settings, worker_id="second")) as second:
        await second.wait_ready(30)

        async def all_committed() -> bool:
            return await _committed(settings, names) == 3

        await _wait_for(all_committed, "b and c committed by the second worker")
        assert _completed(second) == 2  # b and c again, not a
    replies = await read_replies(own_client, stream, 3)
    # a was committed: never run again, one answer. b ran twice; whether its second answer reaches the reply stream
    # is the reply writer's business (the gateway takes the first answer of a request), not the pipeline's.
    assert {r.id for r in replies} == {"a", "b", "c"} and [r.id for r in replies].count("a") == 1
