"""A pool worker whose claim is refused (the partition's old owner has not let go yet) tries it again within a
fraction of a second rather than on its next heartbeat, against the real broker and Redis; and two pool workers
hand a model's partitions over on placement news alone (heartbeats far off)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from autoscaler.placement_store import PlacementRunner
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, Lane, ModelRegistry, Names, now_ms
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings

from .test_pool import _wait_owners

pytestmark = pytest.mark.integration

MODEL = "claimed"
#: Longer than each test: only news and the quick claim retries explain what it sees.
FAR_OFF_S = 30.0


@pytest.fixture
async def model(fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path) -> str:
    await ModelRegistry(redis_client, names).register(build_record(MODEL, "1", tiny_mlp(tmp_path / "m.onnx")))
    await ensure_model_topics(fleet_settings.kafka, names, MODEL, partitions=2)
    return MODEL


def _settings(fleet: FleetSettings, tmp_path: Path, worker_id: str, heartbeat_s: float = FAR_OFF_S) -> WorkerSettings:
    return WorkerSettings(
        fleet=fleet,
        worker_id=worker_id,
        mode="pool",
        follow_assignment=True,
        heartbeat_interval_s=heartbeat_s,
        drain_timeout_s=10,
        cache_dir=str(tmp_path / f"cache-{worker_id}"),
        measure_footprint=False,
    )


async def test_a_refused_claim_is_tried_again_before_the_next_heartbeat(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, model: str
) -> None:
    # Partition 0 is held by a live worker that has not let go yet.
    lease = names.lease_key(names.request_topic(model, Lane.INTERACTIVE), 0)
    await redis_client.set(names.lease_holder_key("old-owner"), "old-owner", px=60_000)
    await redis_client.set(lease, "old-owner")
    async with Worker(_settings(fleet_settings, tmp_path, "pa")) as worker:
        await worker.wait_ready(30)
        pool = worker.pool
        assert pool is not None
        await PlacementRunner(redis_client, names).run([model], {})  # the model goes to pa alone, pa hears of it
        await _wait_owners(redis_client, names, model, {"pa", "old-owner"}, timeout_s=10)
        refused_ms = now_ms()
        await redis_client.delete(lease)  # the old owner lets go (it deletes its lease after its round in hand)
        topic = names.request_topic(model, Lane.INTERACTIVE)
        while pool.partitions != [f"{topic}:0", f"{topic}:1"]:  # claimed, and fetched from its committed offset
            assert now_ms() < refused_ms + 10_000, f"pa owns {pool.partitions}"
            await asyncio.sleep(0.02)
        assert now_ms() < refused_ms + FAR_OFF_S * 1000  # before pa's next beat could have claimed it


async def test_claims_are_tried_again_quickly_for_the_retry_window_not_just_a_heartbeat(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, model: str
) -> None:
    """An old owner whose round in hand outlasts a heartbeat lets go more than a beat after the refusal: the
    quick retries (`CLAIM_RETRY_WINDOW_S`, 10 s) still run then, so the claim comes within a retry pause, well
    before the beat after the next (with the retries stopped after one beat it came only at a later beat)."""
    beat_s = 4.0
    lease = names.lease_key(names.request_topic(model, Lane.INTERACTIVE), 0)
    await redis_client.set(names.lease_holder_key("old-owner"), "old-owner", px=60_000)
    await redis_client.set(lease, "old-owner")
    async with Worker(_settings(fleet_settings, tmp_path, "pa", heartbeat_s=beat_s)) as worker:
        await worker.wait_ready(30)
        await PlacementRunner(redis_client, names).run([model], {})  # the model goes to pa alone, pa hears of it
        await _wait_owners(redis_client, names, model, {"pa", "old-owner"}, timeout_s=10)
        refused = time.monotonic()  # pa was refused partition 0 by now
        await asyncio.sleep(beat_s + 1.0)  # a round in hand outlasting a heartbeat
        await redis_client.delete(lease)  # the old owner lets go
        released = time.monotonic()
        # The quick retries take it within a pause (0.1-0.2 s). Had they stopped after one beat, the next try
        # came a whole beat after the last quick one: at about ``refused + 2 * beat_s``, past this deadline.
        deadline = released + 1.5
        assert deadline < refused + 2 * beat_s - 1.0
        while await redis_client.get(lease) != b"pa":
            assert time.monotonic() < deadline, "not claimed by a quick retry (only at a later heartbeat?)"
            await asyncio.sleep(0.02)


async def test_a_second_replica_takes_its_share_over_on_news_alone(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, model: str
) -> None:
    runner = PlacementRunner(redis_client, names)
    a_settings, b_settings = (_settings(fleet_settings, tmp_path, w) for w in ("pa", "pb"))
    async with Worker(a_settings) as a, Worker(b_settings) as b:
        await a.wait_ready(30)
        await b.wait_ready(30)
        placed = await runner.run([model], {})
        await _wait_owners(redis_client, names, model, set(placed.status[model].workers), timeout_s=10)
        started = time.monotonic()
        await runner.run([model], {model: 2})  # the first owner lets go of one partition, the other claims it
        assert a.pool is not None and b.pool is not None
        while not len(a.pool.partitions) == len(b.pool.partitions) == 1:
            assert time.monotonic() < started + 10, f"pa owns {a.pool.partitions}, pb {b.pool.partitions}"
            await asyncio.sleep(0.02)
        await _wait_owners(redis_client, names, model, {"pa", "pb"}, timeout_s=10)
        assert time.monotonic() < started + FAR_OFF_S  # before either worker's next beat
