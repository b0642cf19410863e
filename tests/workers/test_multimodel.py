"""Several models on one worker under a memory budget, against the real broker and Redis: LRU eviction,
reload from the local disk cache, a corrupted cache entry, a model too large, and the state in Redis.

Sizes are accounted deterministically here (``measure_footprint=False``: artifact x size factor), so the
budget decides exactly how many models fit; `tests/workers/test_footprint.py` covers the measurement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from fleet.demo.modelgen import mlp_onnx, random_mlp, tiny_mlp
from fleet.models.artifacts import build_record
from schemas import ErrorCode, FleetSettings, InferenceResponse, ModelRecord, ModelRegistry, Names
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.residency import WorkerResidency
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings
from workers.errors import WorkerError
from workers.residency import MB

from .conftest import make_request, read_replies

pytestmark = pytest.mark.integration

MODELS = ("ma", "mb", "mc")


async def _register(redis: Any, names: Names, settings: FleetSettings, records: Sequence[ModelRecord]) -> None:
    registry = ModelRegistry(redis, names)
    for record in records:
        await registry.register(record)
        await ensure_model_topics(settings.kafka, names, record.name)


@pytest.fixture
async def models(fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path) -> list[ModelRecord]:
    """Three tiny MLPs (different weights, so different artifacts), registered."""
    records = [build_record(m, "1", tiny_mlp(tmp_path / f"{m}.onnx", seed=i)) for i, m in enumerate(MODELS)]
    await _register(redis_client, names, fleet_settings, records)
    return records


def _settings(fleet: FleetSettings, tmp_path: Path, models: Sequence[str], budget_bytes: float) -> WorkerSettings:
    return WorkerSettings(
        models=tuple(models),
        fleet=fleet,
        heartbeat_interval_s=0.5,
        drain_timeout_s=10,
        cache_dir=str(tmp_path / "artifact-cache"),
        memory_budget_mb=budget_bytes / MB,
        measure_footprint=False,
    )


def _size(record: ModelRecord, settings: WorkerSettings) -> int:
    return int(record.size_bytes * settings.size_factor)


@pytest.fixture
async def two_fit(fleet_settings: FleetSettings, models: list[ModelRecord], tmp_path: Path) -> AsyncIterator[Worker]:
    """A worker serving the three models with room for two (overcommit raised so it may serve all three)."""
    size = _size(models[0], WorkerSettings(models=MODELS, fleet=fleet_settings))
    settings = dataclasses.replace(_settings(fleet_settings, tmp_path, MODELS, 2.5 * size), overcommit_pct=100)
    async with Worker(settings) as worker:
        await worker.wait_ready(60)
        yield worker


async def _ask(producer: AIOKafkaProducer, names: Names, redis: Any, stream: str, model: str) -> InferenceResponse:
    """One request to ``model`` and its reply."""
    request = make_request(stream, np.ones((1, 16), np.float32), model=model)
    key = request.id.encode()
    headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, b"1")]
    await (await producer.send(names.request_topic(model), request.to_bytes(), key=key, headers=headers))
    deadline = time.monotonic() + 30
    while True:
        for reply in await read_replies(redis, stream, 1, timeout_s=max(0.1, deadline - time.monotonic())):
            if reply.id == request.id:
                await redis.delete(stream)
                return reply


def _same_bytes(a: str | Path, b: str | Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def _resident(worker: Worker) -> list[str]:
    return [model for model, _ in worker.residency.residency.keys]


def _sample(worker: Worker, name: str, labels: dict[str, str]) -> float:
    return worker.metrics.registry.get_sample_value(name, labels) or 0.0


async def _published(redis: Any, names: Names, worker: Worker) -> WorkerResidency:
    """The state in Redis once it matches what the worker holds (fails after 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        raw = await redis.get(names.residency_key(worker.id))
        state = None if raw is None else WorkerResidency.from_bytes(raw)
        if state is not None and [m.model for m in state.models] == _resident(worker):
            return state
        assert time.monotonic() < deadline, f"Redis says {state}, the worker holds {_resident(worker)}"
        await asyncio.sleep(0.05)


async def test_least_recently_used_model_is_evicted_and_reloads_from_the_disk_cache(
    two_fit: Worker,
    models: list[ModelRecord],
    producer: AIOKafkaProducer,
    names: Names,
    redis_client: Any,
    stream: str,
) -> None:
    worker = two_fit
    assert _resident(worker) == ["ma", "mb"]  # preloaded while they fit; mc waits for its first request
    assert (await _ask(producer, names, redis_client, stream, "ma")).error is None  # ma is now the most recent
    assert _resident(worker) == ["mb", "ma"]
    assert (await _ask(producer, names, redis_client, stream, "mc")).error is None
    assert _resident(worker) == ["ma", "mc"]  # mb, least recently used, made room
    assert _sample(worker, "fleet_worker_model_evictions_total", {"model": "mb", "version": "1"}) == 1
    assert _sample(worker, "fleet_worker_model_evictions_total", {"model": "ma", "version": "1"}) == 0
    state = await _published(redis_client, names, worker)
    assert state.budget_bytes == worker.residency.capacity.budget_bytes
    assert state.resident_bytes == sum(m.size_bytes for m in state.models)

    os.unlink(models[1].artifact)  # the original is gone: only the worker's disk cache can serve mb now
    hits = _sample(worker, "fleet_worker_artifact_cache_requests_total", {"result": "hit"})
    reply = await _ask(producer, names, redis_client, stream, "mb")
    assert reply.error is None and reply.outputs[0].shape == (1, 4)
    assert _resident(worker) == ["mc", "mb"]  # ma was the least recently used this time
    assert _sample(worker, "fleet_worker_artifact_cache_requests_total", {"result": "hit"}) == hits + 1
    assert _sample(worker, "fleet_worker_model_reload_seconds_count", {"model": "mb", "version": "1"}) == 1
    assert _sample(worker, "fleet_worker_model_loads_total", {"model": "mb", "version": "1"}) == 2
    assert _sample(worker, "fleet_worker_resident_bytes", {}) == worker.residency.residency.used_bytes
    await _published(redis_client, names, worker)


async def test_a_corrupted_cache_entry_is_detected_and_fetched_again(
    two_fit: Worker, models: list[ModelRecord], producer: AIOKafkaProducer, names: Names, redis_client: Any, stream: str
) -> None:
    worker = two_fit
    cached = Path(two_fit.settings.cache_dir) / models[0].sha256[:2] / f"{models[0].sha256}.onnx"
    assert cached.is_file()
    assert (await _ask(producer, names, redis_client, stream, "mc")).error is None  # evicts ma
    assert "ma" not in _resident(worker)
    cached.write_bytes(b"\x00" * cached.stat().st_size)  # disk rot
    reply = await _ask(producer, names, redis_client, stream, "ma")
    assert reply.error is None
    assert _sample(worker, "fleet_worker_artifact_cache_requests_total", {"result": "corrupt"}) == 1
    assert _same_bytes(cached, models[0].artifact)


async def test_a_model_larger_than_the_budget_fails_clearly_and_the_others_serve(
    fleet_settings: FleetSettings,
    models: list[ModelRecord],
    names: Names,
    redis_client: Any,
    producer: AIOKafkaProducer,
    stream: str,
    tmp_path: Path,
) -> None:
    big = build_record("big", "1", mlp_onnx(tmp_path / "big.onnx", random_mlp([16, 256, 256, 4])))
    await _register(redis_client, names, fleet_settings, [big])
    settings = _settings(fleet_settings, tmp_path, ("ma", "big"), 1.5 * _size(models[0], WorkerSettings(models=MODELS)))
    async with Worker(settings) as worker:
        await worker.wait_ready(60)
        for _ in range(2):  # asked twice: refused twice, never loaded (no thrashing)
            reply = await _ask(producer, names, redis_client, stream, "big")
            assert reply.error is not None and reply.error.code is ErrorCode.MODEL_LOAD_FAILED
            need, budget = _size(big, settings) / MB, settings.memory_budget_mb
            assert f"needs {need:.1f} MB, budget {budget:.1f} MB" in reply.error.message
            assert (await _ask(producer, names, redis_client, stream, "ma")).error is None
        assert _resident(worker) == ["ma"]
        assert _sample(worker, "fleet_worker_model_loads_total", {"model": "big", "version": "1"}) == 0


async def test_models_that_overcommit_the_budget_are_refused_at_start(
    fleet_settings: FleetSettings, models: list[ModelRecord], names: Names, redis_client: Any, tmp_path: Path
) -> None:
    size = _size(models[0], WorkerSettings(models=MODELS))
    worker = Worker(_settings(fleet_settings, tmp_path, MODELS, 1.5 * size))  # 3 models, room for 1.65
    with pytest.raises(WorkerError, match="overcommit"):
        await worker.start()
    assert await redis_client.get(names.residency_key(worker.id)) is None


async def test_a_model_over_its_memory_cap_fails_clearly_and_the_others_serve(
    fleet_settings: FleetSettings,
    models: list[ModelRecord],
    names: Names,
    redis_client: Any,
    producer: AIOKafkaProducer,
    stream: str,
    tmp_path: Path,
) -> None:
    capped = build_record("capped", "1", tiny_mlp(tmp_path / "capped.onnx", seed=7), labels={"memory_cap_mb": "0.001"})
    await _register(redis_client, names, fleet_settings, [capped])
    settings = dataclasses.replace(_settings(fleet_settings, tmp_path, ("ma", "capped"), 0), preload=False)
    async with Worker(settings) as worker:
        await worker.wait_ready(60)
        reply = await _ask(producer, names, redis_client, stream, "capped")
        assert reply.error is not None and reply.error.code is ErrorCode.MODEL_LOAD_FAILED
        size_mb = _size(capped, settings) / MB
        assert f"its footprint {size_mb:.1f} MB exceeds its memory cap 0.0 MB" in reply.error.message
        assert (await _ask(producer, names, redis_client, stream, "ma")).error is None
        assert _resident(worker) == ["ma"]  # the capped model was unloaded, not kept
