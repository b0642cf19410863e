"""An idle pool worker's Redis traffic does not grow with its models (real broker and Redis): counted with
``INFO commandstats`` over a few heartbeats, for 10 and for 200 assigned models."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, ModelRegistry, Names
from workers import Worker, WorkerSettings

from .conftest import make_request, produce, read_replies

pytestmark = pytest.mark.integration

INTERVAL_S = 0.2
WINDOW_S = 3.0


async def _calls(redis: Any) -> Counter[str]:
    """Calls per command since the Redis server started (commands run by scripts count one each)."""
    stats = await redis.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()})


async def _idle_commands_per_beat(
    fleet: FleetSettings, names: Names, redis: Any, tmp_path: Path, producer: AIOKafkaProducer, models: Sequence[str]
) -> tuple[float, Counter[str]]:
    """A pool worker following an assignment of ``models`` (all idle but the first, which answered one
    request before): its Redis commands per heartbeat over ``WINDOW_S``, and the commands counted."""
    admin = AIOKafkaAdminClient(**fleet.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(names.request_topic(m), 2, 1) for m in models])
    finally:
        await admin.close()
    await ModelRegistry(redis, names).register(build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx")))
    worker_id = f"idle-{len(models)}"
    await redis.sadd(names.assignment_key(worker_id), *models)
    async with redis.pipeline(transaction=True) as pipe:
        for model in models:
            pipe.hset(names.placement_key(model), mapping={"workers": worker_id})
        pipe.incr(names.placement_epoch_key)
        await pipe.execute()
    settings = WorkerSettings(
        fleet=fleet,
        worker_id=worker_id,
        mode="pool",
        follow_assignment=True,
        heartbeat_interval_s=INTERVAL_S,
        cache_dir=str(tmp_path / "cache"),
        measure_footprint=False,
    )
    stream = names.reply_stream(worker_id)
    async with Worker(settings) as worker:
        await worker.wait_ready(60)
        assert worker.pool is not None and len(worker.pool.partitions) == 2 * len(models)
        # one model served a request: its stats report is written once, not again every beat while it idles
        await produce(producer, names, [make_request(stream, np.ones((1, 16), np.float32), model="tiny")])
        await read_replies(redis, stream, 1)
        await asyncio.sleep(4 * INTERVAL_S)  # its report went out; the claims of the start are long done
        before = await _calls(redis)
        await asyncio.sleep(WINDOW_S)
        counted = await _calls(redis) - before
    counted.pop("info", None)  # ours
    beats = counted["zremrangebyscore"]  # one per heartbeat (it prunes the worker index)
    assert beats >= 3, counted
    return counted.total() / beats, counted


async def test_an_idle_pool_workers_redis_commands_per_heartbeat_do_not_grow_with_its_models(
    fleet_settings: FleetSettings, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    few, many = (["tiny", *(f"a{i:03d}" for i in range(9))], ["tiny", *(f"b{i:03d}" for i in range(199))])
    per_beat: dict[int, float] = {}
    counted: dict[int, Counter[str]] = {}
    for models in (few, many):
        names = Names(f"{fleet_settings.namespace}-{len(models)}")
        fleet = dataclasses.replace(fleet_settings, namespace=names.namespace)
        path = tmp_path / str(len(models))
        path.mkdir()
        per_beat[len(models)], counted[len(models)] = await _idle_commands_per_beat(
            fleet, names, redis_client, path, producer, models
        )
    # a handful per beat (heartbeat, liveness, placement epoch, assignment, residency), the same for both:
    # before, every beat renewed each partition's lease and read each model's placement and rewrote its stats
    assert per_beat[200] <= 12, counted[200]
    assert abs(per_beat[200] - per_beat[10]) <= 1.0, (per_beat, counted)
