"""The pool mode (FLEET_WORKER_MODE=pool) against the real broker and Redis, with in-process workers: many
models on a fixed set of Kafka clients, partition leases and their handover on a move or a crash, lane
priority and fairness across models."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, InferenceRequest, InferenceResponse, Lane, ModelRecord, ModelRegistry, Names
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from workers import Worker, WorkerSettings
from workers.group_offsets import GroupOffsets
from workers.pool import PoolConsumer
from workers.residency import MB

from .conftest import make_request

pytestmark = pytest.mark.integration

PARTITIONS = 2


async def _create_topics(settings: FleetSettings, names: Names, models: Iterable[str]) -> None:
    """Both lane topics of ``models`` in one admin call (2 partitions each: 200 models are 800 partitions; the bulk
    topic up front, as after a first bulk request)."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        topics = [NewTopic(t, PARTITIONS, 1) for m in models for t in (names.request_topic(m), names.bulk_topic(m))]
        await admin.create_topics(topics)
    finally:
        await admin.close()


async def _register(
    settings: FleetSettings, names: Names, redis: Any, tmp_path: Path, models: Sequence[str]
) -> dict[str, ModelRecord]:
    registry = ModelRegistry(redis, names)
    records = {m: build_record(m, "1", tiny_mlp(tmp_path / f"{m}.onnx", seed=i)) for i, m in enumerate(models)}
    for record in records.values():
        await registry.register(record)
    await _create_topics(settings, names, models)
    return records


def _settings(fleet: FleetSettings, tmp_path: Path, worker_id: str, **extra: Any) -> WorkerSettings:
    return WorkerSettings(
        fleet=fleet,
        worker_id=worker_id,
        mode="pool",
        heartbeat_interval_s=0.5,
        drain_timeout_s=10,
        cache_dir=str(tmp_path / f"cache-{worker_id}"),
        measure_footprint=False,
        **extra,
    )


@pytest.fixture
async def producer(fleet_settings: FleetSettings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(**{**fleet_settings.kafka.producer_kwargs(), "linger_ms": 5})
    await p.start()
    yield p
    await p.stop()


async def _send(producer: AIOKafkaProducer, topic: str, requests: Iterable[InferenceRequest]) -> None:
    futures = []
    for request in requests:
        key = request.id.encode()
        headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, b"1")]
        futures.append(await producer.send(topic, request.to_bytes(), key=key, headers=headers))
    await producer.flush()
    await asyncio.gather(*futures)


class _Replies:
    """Reads a reply stream from the start, keeping every entry (duplicates included)."""

    def __init__(self, redis: Any, stream: str) -> None:
        self._redis, self._stream, self._last = redis, stream, "0-0"
        self.entries: list[InferenceResponse] = []
        self.arrived: dict[str, float] = {}

    async def until(self, done: Any, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(self.entries)} replies after {timeout_s}s"
            found = await self._redis.xread({self._stream: self._last}, count=5000, block=200)
            for _, entries in found or []:
                for entry_id, fields in entries:
                    self._last = entry_id
                    reply = InferenceResponse.from_bytes(fields[b"r"])
                    self.entries.append(reply)
                    self.arrived.setdefault(reply.id, time.monotonic())

    def ids(self) -> set[str]:
        return {r.id for r in self.entries}


def _expected(record: ModelRecord, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(record.artifact)
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: x})[0])


async def test_one_pool_worker_serves_200_models_with_a_fixed_set_of_kafka_clients(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    models = [f"m{i:03d}" for i in range(200)]
    records = await _register(fleet_settings, names, redis_client, tmp_path, models)
    settings = _settings(fleet_settings, tmp_path, "pool-a", models=tuple(models))
    stream = names.reply_stream("pool")
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    async with Worker(settings) as worker:
        await worker.wait_ready(60)
        pool = worker.pool
        assert isinstance(pool, PoolConsumer) and worker.consumers == []
        # two lane consumers and one offsets client for 200 models (plus the worker's producer), no model thread
        assert len(pool.kafka_clients) == 3
        assert len(pool.partitions) == 200 * 2 * PARTITIONS  # alone on both lane topics of every model
        requests = {m: make_request(stream, x, model=m, rid=f"{m}-r") for m in models}
        for model, request in requests.items():
            await _send(producer, names.request_topic(model), [request])
        replies = _Replies(redis_client, stream)
        await replies.until(lambda r: len(r.ids()) >= len(models), timeout_s=120)
        assert len(pool.kafka_clients) == 3
    by_id = {r.id: r for r in replies.entries}
    assert sorted(Counter(r.id for r in replies.entries).values()) == [1] * len(models)  # each answered once
    for model in ("m000", "m101", "m199"):  # and correctly: what ONNX Runtime answers for that model's weights
        reply = by_id[f"{model}-r"]
        assert reply.error is None and reply.model == model
        np.testing.assert_allclose(reply.outputs[0].to_numpy(), _expected(records[model], x), rtol=1e-5, atol=1e-6)
    # offsets are committed under each model's own group (what the lag collector and fleet dlq read)
    offsets = GroupOffsets(fleet_settings.kafka)
    await offsets.start()
    try:
        committed = {}
        for model in ("m000", "m199"):
            tps = [TopicPartition(names.request_topic(model), p) for p in range(PARTITIONS)]
            found = await offsets.committed(names.worker_group(model), tps)
            committed[model] = sum(o or 0 for o in found.values())
        assert committed == {"m000": 1, "m199": 1}
    finally:
        await offsets.close()


async def _assign(redis: Any, names: Names, assignment: dict[str, Sequence[str]]) -> None:
    """What the placement scheduler writes: each worker's assignment and each model's replicas."""
    replicas: dict[str, list[str]] = {}
    for worker, models in assignment.items():
        await redis.delete(names.assignment_key(worker))
        if models:
            await redis.sadd(names.assignment_key(worker), *models)
        for model in models:
            replicas.setdefault(model, []).append(worker)
    for model, workers in replicas.items():
        await redis.hset(names.placement_key(model), mapping={"workers": ",".join(sorted(workers))})
    await redis.incr(names.placement_epoch_key)  # as the scheduler does with every changed placement


async def _owners(redis: Any, names: Names, model: str) -> set[str]:
    keys = [names.lease_key(names.request_topic(model, Lane.INTERACTIVE), p) for p in range(PARTITIONS)]
    return {v.decode() if isinstance(v, bytes) else str(v) for v in await redis.mget(keys) if v is not None}


async def _wait_owners(redis: Any, names: Names, model: str, wanted: set[str], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (owners := await _owners(redis, names, model)) != wanted:
        assert time.monotonic() < deadline, f"{model} leased by {owners}, not {wanted}"
        await asyncio.sleep(0.05)


async def test_moving_a_model_between_pool_workers_under_load_loses_and_duplicates_nothing(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    await _register(fleet_settings, names, redis_client, tmp_path, ["moved", "stays"])
    await _assign(redis_client, names, {"pa": ["moved", "stays"], "pb": []})
    stream = names.reply_stream("pool")
    x = np.ones((1, 16), np.float32)
    a_settings = _settings(fleet_settings, tmp_path, "pa", follow_assignment=True)
    b_settings = _settings(fleet_settings, tmp_path, "pb", follow_assignment=True)
    sent: list[str] = []

    async def load(stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            batch = [make_request(stream, x, model=m, rid=f"{m}-{i}-{k}") for m in ("moved", "stays") for k in range(5)]
            for model in ("moved", "stays"):
                await _send(producer, names.request_topic(model), [r for r in batch if r.model == model])
            sent.extend(r.id for r in batch)
            i += 1
            await asyncio.sleep(0.02)

    async with Worker(a_settings) as a, Worker(b_settings) as b:
        await a.wait_ready(30)
        await b.wait_ready(30)
        await _wait_owners(redis_client, names, "moved", {"pa"})
        stop = asyncio.Event()
        loading = asyncio.create_task(load(stop))
        await asyncio.sleep(1.0)
        await _assign(redis_client, names, {"pa": ["stays"], "pb": ["moved"]})  # the move
        await _wait_owners(redis_client, names, "moved", {"pb"})
        await asyncio.sleep(1.0)
        await _assign(redis_client, names, {"pa": ["stays", "moved"], "pb": ["moved"]})  # a second replica
        await _wait_owners(redis_client, names, "moved", {"pa", "pb"})
        await asyncio.sleep(1.0)
        stop.set()
        await loading
        replies = _Replies(redis_client, stream)
        await replies.until(lambda r: len(r.ids()) >= len(sent), timeout_s=60)
        # each record was taken into a round exactly once over both workers (no redelivery to hide behind the
        # result markers, which would stop a second reply reaching the stream)
        labels = {"model": "moved", "lane": "interactive"}
        taken = sum(
            w.metrics.registry.get_sample_value("fleet_worker_lane_requests_total", labels) or 0 for w in (a, b)
        )
        assert taken == sum(1 for rid in sent if rid.startswith("moved-"))
    counts = Counter(r.id for r in replies.entries)
    assert set(counts) == set(sent) and max(counts.values()) == 1  # every request answered once
    assert all(r.error is None for r in replies.entries)
    answered_by = {(r.model, r.worker) for r in replies.entries}
    assert ("moved", "pa") in answered_by and ("moved", "pb") in answered_by and ("stays", "pb") not in answered_by


async def test_a_killed_workers_partitions_are_taken_over_after_the_lease_ttl(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    await _register(fleet_settings, names, redis_client, tmp_path, ["m"])
    await _assign(redis_client, names, {"pa": ["m"]})
    stream = names.reply_stream("pool")
    a = Worker(_settings(fleet_settings, tmp_path, "pa", follow_assignment=True))
    await a.start()
    await a.wait_ready(30)
    await _wait_owners(redis_client, names, "m", {"pa"})
    # A hard stop: the worker ends without releasing its leases (what a SIGKILL leaves behind).
    assert a.pool is not None

    async def keep(*_: Any) -> None:
        return None

    a.pool._leases.release = keep  # type: ignore[method-assign,assignment]
    a.pool._leases.retire = keep  # type: ignore[method-assign,assignment]
    await a.stop()
    await redis_client.delete(names.worker_key("pa"))
    assert await _owners(redis_client, names, "m") == {"pa"}  # still leased to the dead worker
    await _assign(redis_client, names, {"pa": [], "pb": ["m"]})
    request = make_request(stream, np.ones((1, 16), np.float32), model="m", rid="after-kill")
    await _send(producer, names.request_topic("m"), [request])
    async with Worker(_settings(fleet_settings, tmp_path, "pb", follow_assignment=True)) as b:
        await b.wait_ready(30)
        assert b.pool is not None and b.pool.partitions == []  # the leases have not expired yet
        await _wait_owners(redis_client, names, "m", {"pb"}, timeout_s=10)  # ttl = 3 x 0.5 s
        replies = _Replies(redis_client, stream)
        await replies.until(lambda r: "after-kill" in r.ids(), timeout_s=30)
    assert [r.worker for r in replies.entries] == ["pb"]


async def test_interactive_before_bulk_and_a_backlogged_model_does_not_block_another(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    await _register(fleet_settings, names, redis_client, tmp_path, ["busy", "bulky", "quiet"])
    stream = names.reply_stream("pool")
    x = np.ones((1, 16), np.float32)
    busy = [make_request(stream, x, model="busy", rid=f"busy-{i}") for i in range(3000)]
    bulk = [make_request(stream, x, model="bulky", rid=f"bulk-{i}") for i in range(3000)]
    await _send(producer, names.request_topic("busy"), busy)
    await _send(producer, names.bulk_topic("bulky"), bulk)
    settings = _settings(fleet_settings, tmp_path, "pa", pool_threads=2, models=("busy", "bulky", "quiet"))
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        replies = _Replies(redis_client, stream)
        await replies.until(lambda r: len(r.entries) >= 200)  # the backlogs are being served
        quiet = [make_request(stream, x, model="quiet", rid=f"quiet-{i}") for i in range(20)]
        await _send(producer, names.request_topic("quiet"), quiet)
        await replies.until(lambda r: {q.id for q in quiet} <= r.ids())
        done_quiet = max(replies.arrived[q.id] for q in quiet)
        served_before = replies.ids()
        # the quiet model was answered while both backlogs still had work (not after them)
        assert not {b.id for b in busy} <= served_before, "the interactive backlog was served first"
        assert not {b.id for b in bulk} <= served_before, "the bulk backlog was served first"
        await replies.until(lambda r: len(r.ids()) >= 6020, timeout_s=120)
    last_busy = max(replies.arrived[b.id] for b in busy)
    last_bulk = max(replies.arrived[b.id] for b in bulk)
    assert last_busy < last_bulk  # interactive before bulk across models
    assert done_quiet < last_busy


async def test_pool_models_load_on_first_use_and_the_lru_budget_evicts_them(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    models = ["la", "lb", "lc"]
    records = await _register(fleet_settings, names, redis_client, tmp_path, models)
    size = int(records["la"].size_bytes * WorkerSettings(models=("la",), fleet=fleet_settings).size_factor)
    settings = _settings(fleet_settings, tmp_path, "pa", models=tuple(models), memory_budget_mb=2.5 * size / MB)
    stream = names.reply_stream("pool")
    x = np.ones((1, 16), np.float32)
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        assert worker.residency.residency.keys == []  # nothing loaded before its first request
        replies = _Replies(redis_client, stream)
        for i, model in enumerate(models):
            await _send(producer, names.request_topic(model), [make_request(stream, x, model=model, rid=f"{model}-1")])
            await replies.until(lambda r, n=i + 1: len(r.ids()) >= n)
        resident = [m for m, _ in worker.residency.residency.keys]
        assert resident == ["lb", "lc"]  # room for two: the least recently used one went
        await _send(producer, names.request_topic("la"), [make_request(stream, x, model="la", rid="la-2")])
        await replies.until(lambda r: "la-2" in r.ids())
        assert [m for m, _ in worker.residency.residency.keys] == ["lc", "la"]
    assert all(r.error is None for r in replies.entries)
