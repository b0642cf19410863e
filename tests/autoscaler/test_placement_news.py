"""Placement news on ``Names.assignments_channel`` against real Redis: a round that changed something publishes
the workers concerned (changed assignment, or changed replicas of a model they serve) and an idle round
publishes nothing; the service places at once when a worker joins, and a following pool worker then serves
its model although both sides' periodic turns (placement interval, heartbeat poll) are far off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from autoscaler import AutoscalerService, AutoscalerSettings
from autoscaler.placement import MB
from autoscaler.placement_store import PlacementRunner
from schemas import FleetSettings, ModelRecord, Names, now_ms
from schemas.assignment_news import AssignmentNews
from schemas.residency import WorkerResidency
from workers import Worker, WorkerSettings

from .conftest import MODEL, wait_until

pytestmark = pytest.mark.integration

#: Placement interval and heartbeat: longer than each test, so only the news explains what it sees.
FAR_OFF_S = 30.0


async def _beat(redis: Any, names: Names, worker: str) -> None:
    """Publish what a following worker publishes: its heartbeat and its residency."""
    await redis.hset(names.worker_key(worker), mapping={"state": "ready", "follows": "1", "labels": "cpu,onnx"})
    await redis.zadd(names.workers_key, {worker: now_ms()})
    state = WorkerResidency(worker, 500 * MB, 500 * MB, 0, (), now_ms())
    await redis.set(names.residency_key(worker), state.to_bytes())


@pytest.fixture
async def news(redis_client: Any, names: Names) -> AsyncIterator[asyncio.Queue[AssignmentNews]]:
    """Every message published on the channel while the test runs, in order."""
    seen: asyncio.Queue[AssignmentNews] = asyncio.Queue()
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(names.assignments_channel)

    async def read() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None and message["type"] == "message":
                seen.put_nowait(AssignmentNews.from_bytes(message["data"]))

    task = asyncio.create_task(read())
    yield seen
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pubsub.aclose()


async def test_a_round_names_the_workers_whose_assignment_or_replicas_changed_and_an_idle_round_nothing(
    redis_client: Any, names: Names, tiny_model: ModelRecord, news: asyncio.Queue[AssignmentNews]
) -> None:
    runner = PlacementRunner(redis_client, names)
    await _beat(redis_client, names, "w1")
    await runner.run([MODEL], {})
    assert await asyncio.wait_for(news.get(), 5) == AssignmentNews.assigned(["w1"])

    await _beat(redis_client, names, "w2")
    await runner.run([MODEL], {MODEL: 2})  # a second replica: w2's assignment and w1's replicas change
    assert await asyncio.wait_for(news.get(), 5) == AssignmentNews.assigned(["w1", "w2"])

    for _ in range(2):  # nothing changed: nothing published
        await runner.run([MODEL], {MODEL: 2})
    await redis_client.publish(names.assignments_channel, AssignmentNews.joined("marker").to_bytes())
    assert await asyncio.wait_for(news.get(), 5) == AssignmentNews.joined("marker")  # the next message is ours

    await runner.run([MODEL], {MODEL: 1})  # back to one replica: both hear of it (one lets go, one keeps it)
    assert await asyncio.wait_for(news.get(), 5) == AssignmentNews.assigned(["w1", "w2"])


async def test_a_joining_pool_worker_is_placed_and_serves_before_either_periodic_turn(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tiny_model: ModelRecord, tmp_path: Path
) -> None:
    settings = AutoscalerSettings(
        models=(MODEL,), placement=True, interval_s=FAR_OFF_S, leader_election=False, gpus=0, fleet=fleet_settings
    )
    worker_settings = WorkerSettings(
        fleet=fleet_settings,
        worker_id="joiner",
        mode="pool",
        follow_assignment=True,
        heartbeat_interval_s=FAR_OFF_S,
        cache_dir=str(tmp_path / "cache"),
        measure_footprint=False,
    )
    async with AutoscalerService(settings):
        # Its first round (no worker yet) is done; the next periodic one is FAR_OFF_S away.
        stamp = await wait_until(lambda: redis_client.get(names.placement_round_key), 10, "the first placement round")
        next_round_ms = int(stamp) + FAR_OFF_S * 1000  # the routine waits the interval after each round
        async with Worker(worker_settings) as worker:
            await worker.wait_ready(30)
            pool = worker.pool
            assert pool is not None
            await wait_until(lambda: len(pool.partitions) > 0, 15, "the joiner owning the model's partitions")
            assert now_ms() < next_round_ms  # neither periodic turn came (the worker's poll is later still)
            assert set(pool.models) == {MODEL}
