"""A worker following its assignment (``FLEET_WORKER_FOLLOW_ASSIGNMENT``), against the real broker and Redis:
it serves what the scheduler assigned, starts a newly assigned model, stops an unassigned one (leaving its
groups: another worker then gets every partition), and picks its assignment up again after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from autoscaler.placement_store import PlacementRunner
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, ModelRegistry, Names, SettingsError
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings
from workers.assignment import worker_labels

from .test_multimodel import _ask

pytestmark = pytest.mark.integration


@pytest.fixture
async def two_models(fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path) -> None:
    registry = ModelRegistry(redis_client, names)
    for i, model in enumerate(("ma", "mb")):
        await registry.register(build_record(model, "1", tiny_mlp(tmp_path / f"{model}.onnx", seed=i)))
        await ensure_model_topics(fleet_settings.kafka, names, model)


def _following(fleet: FleetSettings, tmp_path: Path, worker_id: str) -> WorkerSettings:
    return WorkerSettings(
        follow_assignment=True,
        worker_id=worker_id,
        fleet=fleet,
        heartbeat_interval_s=0.3,
        drain_timeout_s=10,
        cache_dir=str(tmp_path / "artifact-cache"),
        labels=("blue",),
    )


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {timeout_s}s"
        await asyncio.sleep(0.05)


def _served(worker: Worker) -> list[str]:
    return sorted(c.model for c in worker.consumers)


async def test_a_following_worker_starts_and_stops_models_as_assigned_and_keeps_them_across_a_restart(
    two_models: None,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    producer: AIOKafkaProducer,
    stream: str,
    tmp_path: Path,
) -> None:
    key = names.assignment_key("follower")
    await redis_client.sadd(key, "ma", "not a model name")  # an illegal name is logged and skipped
    async with Worker(_following(fleet_settings, tmp_path, "follower")) as worker:
        await worker.wait_ready(60)
        assert _served(worker) == ["ma"]
        beat = {k.decode(): v.decode() for k, v in (await redis_client.hgetall(names.worker_key("follower"))).items()}
        assert beat["follows"] == "1" and {"blue", "cpu", "onnx"} <= set(beat["labels"].split(","))
        assert (await _ask(producer, names, redis_client, stream, "ma")).error is None

        # The scheduler moves the worker from ma to mb.
        async with redis_client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.sadd(key, "mb")
            await pipe.execute()
        await _until(lambda: _served(worker) == ["mb"], "serving only mb")
        assert (await _ask(producer, names, redis_client, stream, "mb")).error is None
        assert all(model != "ma" for model, _ in worker.residency.residency.keys)  # ma's memory released
        beat_models = (await redis_client.hget(names.worker_key("follower"), "models")).decode()
        assert beat_models == "mb"

        # ma's groups were left: a worker joining them now gets every partition of ma and answers.
        static = WorkerSettings(models=("ma",), fleet=fleet_settings, heartbeat_interval_s=0.3, drain_timeout_s=10)
        async with Worker(static) as other:
            await other.wait_ready(60)
            topic = names.request_topic("ma")
            partitions = fleet_settings.kafka.partitions  # the topics were created with this count
            assert len([p for p in other.consumers[0].partitions if p.startswith(f"{topic}:")]) == partitions
            assert (await _ask(producer, names, redis_client, stream, "ma")).error is None

    # A restarted worker (same id) serves its stored assignment from the start.
    async with Worker(_following(fleet_settings, tmp_path, "follower")) as worker:
        await worker.wait_ready(60)
        assert _served(worker) == ["mb"]
        assert (await _ask(producer, names, redis_client, stream, "mb")).error is None


async def test_the_scheduler_places_models_on_a_following_worker(
    two_models: None, fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    async with Worker(_following(fleet_settings, tmp_path, "placed")) as worker:
        await worker.wait_ready(60)
        assert _served(worker) == []
        await _until_placed(redis_client, names)
        await _until(lambda: _served(worker) == ["ma", "mb"], "serving both models")


async def _until_placed(redis: Any, names: Names) -> None:
    """Run placement rounds until the worker's residency is published and both models are placed."""
    runner = PlacementRunner(redis, names)
    deadline = time.monotonic() + 10
    while True:
        result = await runner.run(["ma", "mb"], {})
        if all(s.workers == ("placed",) for s in result.status.values()):
            return
        assert time.monotonic() < deadline, f"not placed: {result.status}"
        await asyncio.sleep(0.1)


def test_follow_assignment_and_a_static_model_list_are_exclusive(fleet_settings: FleetSettings) -> None:
    with pytest.raises(SettingsError, match="must be empty"):
        WorkerSettings(models=("ma",), follow_assignment=True, fleet=fleet_settings)
    with pytest.raises(SettingsError, match="required"):
        WorkerSettings(fleet=fleet_settings)
    env = {"FLEET_WORKER_FOLLOW_ASSIGNMENT": "true", "FLEET_WORKER_LABELS": "gpu,fast"}
    settings = WorkerSettings.from_env(env)
    assert settings.follow_assignment and settings.models == () and settings.labels == ("gpu", "fast")


def test_worker_labels_name_the_device_and_the_frameworks(fleet_settings: FleetSettings) -> None:
    cpu = worker_labels(WorkerSettings(follow_assignment=True, device="cpu", labels=("fast",), fleet=fleet_settings))
    assert {"fast", "cpu", "onnx"} <= set(cpu) and "gpu" not in cpu and not any(x.startswith("cuda:") for x in cpu)
    gpu = worker_labels(WorkerSettings(follow_assignment=True, device="cuda:1", fleet=fleet_settings))
    assert {"gpu", "cuda:1"} <= set(gpu) and "cpu" not in gpu
