"""A pool worker's partition counts: a new topic is asked at once, a missing one (a bulk topic not created yet)
only every ``missing_s``, every count again after ``ttl_s`` (the broker a function); and a real idle pool worker
does not ask the broker for its models' missing bulk topics every heartbeat."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, ModelRegistry, Names
from schemas.topics import ensure_topics_for_models
from workers import Worker, WorkerSettings
from workers.group_offsets import GroupOffsets
from workers.partition_counts import PartitionCounts


class Broker:
    """Topics and their partition counts; remembers what it was asked."""

    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = topics
        self.asked: list[list[str]] = []

    async def partitions(self, topics: list[str]) -> dict[str, int]:
        self.asked.append(sorted(topics))
        return {t: self.topics[t] for t in topics if t in self.topics}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_missing_topics_are_asked_again_only_on_their_cadence() -> None:
    broker, clock = Broker({"req.a": 2, "req.b": 2}), Clock()
    counts = PartitionCounts(broker.partitions, ttl_s=60.0, missing_s=10.0, clock=clock)
    topics = ["req.a", "bulk.a", "req.b", "bulk.b"]
    assert await counts.get(topics) == {"req.a": 2, "req.b": 2}
    for _ in range(4):  # heartbeats: nothing is asked, the bulk topics are not created yet
        clock.now += 2.0
        assert await counts.get(topics) == {"req.a": 2, "req.b": 2}
    assert broker.asked == [sorted(topics)]

    assert await counts.get([*topics, "req.c"]) == {"req.a": 2, "req.b": 2}  # a new model's topic: asked at once
    assert broker.asked[-1] == ["req.c"]
    broker.topics["bulk.a"] = 2  # a first bulk request created it
    clock.now += 2.0
    assert await counts.get(topics) == {"req.a": 2, "req.b": 2, "bulk.a": 2}  # 10 s after it was found missing
    assert broker.asked[-1] == ["bulk.a", "bulk.b"]
    clock.now += 2.0
    await counts.get(topics)
    assert broker.asked[-1] == ["bulk.a", "bulk.b"] and len(broker.asked) == 3

    clock.now += 60.0  # every count is asked again (partitions can be added)
    await counts.get(topics)
    assert broker.asked[-1] == sorted(topics)


@pytest.mark.integration
async def test_an_idle_pool_worker_does_not_ask_for_missing_bulk_topics_every_beat(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = ["a", "b", "c"]
    artifact = tiny_mlp(tmp_path / "tiny.onnx")
    for model in models:
        await ModelRegistry(redis_client, names).register(build_record(model, "1", artifact))
    await ensure_topics_for_models(fleet_settings.kafka, names, {m: 1 for m in models})
    asked: list[list[str]] = []
    partitions = GroupOffsets.partitions

    async def counted(self: GroupOffsets, topics: list[str]) -> dict[str, int]:
        asked.append(sorted(topics))
        return await partitions(self, topics)

    monkeypatch.setattr(GroupOffsets, "partitions", counted)
    settings = WorkerSettings(
        fleet=fleet_settings,
        models=tuple(models),
        mode="pool",
        heartbeat_interval_s=0.1,
        cache_dir=str(tmp_path / "cache"),
        measure_footprint=False,
    )
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        assert worker.pool is not None and len(worker.pool.partitions) == len(models)
        await asyncio.sleep(1.5)  # about 15 heartbeats
    bulk = [topics for topics in asked if names.bulk_topic("a") in topics]
    assert len(bulk) == 1, asked  # once at the start; again only after pool_missing_topic_recheck_s (10 s)
