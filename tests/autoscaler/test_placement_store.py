"""The placement runner against real Redis: what it stores, that a new runner keeps it, dead workers, a
model too large for every worker. Workers are represented by what they publish (heartbeat hash and
residency key, the wire contract); `tests/workers/test_assignment.py` runs real following workers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from autoscaler.backends import PlacementBackend
from autoscaler.placement import MB
from autoscaler.placement_store import PlacementRunner, demand_of, read_placement
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, ModelRegistry, Names, now_ms
from schemas.residency import ResidentModel, WorkerResidency
from schemas.traffic import TrafficSplit
from tests.conftest import REDIS_KINDS, single_or_cluster

#: Every test here runs on one Redis server and on a 3-master Redis Cluster.
redis_url = pytest.fixture(params=REDIS_KINDS, name="redis_url")(single_or_cluster)

pytestmark = pytest.mark.integration


async def _beat(redis: Any, names: Names, worker: str, budget_mb: int, resident: tuple[str, ...] = ()) -> None:
    """Publish what a following worker publishes: its heartbeat and its residency."""
    await redis.hset(
        names.worker_key(worker), mapping={"state": "ready", "follows": "1", "labels": "cpu,onnx", "models": ""}
    )
    await redis.zadd(names.workers_key, {worker: now_ms()})
    models = tuple(ResidentModel(m, "1", MB, 0.0, 0.0) for m in resident)
    state = WorkerResidency(worker, budget_mb * MB, budget_mb * MB, len(models) * MB, models, now_ms())
    await redis.set(names.residency_key(worker), state.to_bytes())


async def _assigned(redis: Any, names: Names, worker: str) -> set[str]:
    return {m.decode() for m in await redis.smembers(names.assignment_key(worker))}


@pytest.fixture
async def registered(redis_client: Any, names: Names, tmp_path: Path) -> list[str]:
    registry = ModelRegistry(redis_client, names)
    artifact = tiny_mlp(tmp_path / "m.onnx")
    for model in ("ma", "mb", "mc", "huge"):
        labels = {"requires": "gpu"} if model == "mc" else {}
        await registry.register(build_record(model, "1", artifact, labels=labels))
    await registry.record_measured_size("huge", "1", 900 * MB)
    return ["ma", "mb", "mc", "huge"]


async def test_placement_is_stored_kept_by_a_new_runner_and_explains_failures(
    redis_client: Any, names: Names, registered: list[str]
) -> None:
    await _beat(redis_client, names, "w1", 400)
    await _beat(redis_client, names, "w2", 500)
    first = await PlacementRunner(redis_client, names).run(registered, {"mb": 2})
    w1, w2 = await _assigned(redis_client, names, "w1"), await _assigned(redis_client, names, "w2")
    assert w1 | w2 == {"ma", "mb"} and "mb" in w1 & w2  # two replicas of mb, on distinct workers
    assert {w: set(m) for w, m in first.assignments.items()} == {"w1": w1, "w2": w2}
    status = await read_placement(redis_client, names, registered)
    assert status["huge"]["state"] == "schedule_failed"
    assert status["huge"]["reason"].startswith("needs 900 MB, largest free ")
    assert status["mc"] == {**status["mc"], "state": "schedule_failed", "reason": "no worker has label gpu"}
    assert status["mb"]["state"] == "placed" and status["mb"]["workers"] == "w1,w2"

    # A restarted scheduler has only Redis: it keeps ma where it is although the other worker now holds it.
    holder_of_ma = "w1" if "ma" in w1 else "w2"
    other = "w2" if holder_of_ma == "w1" else "w1"
    await _beat(redis_client, names, other, 500, resident=("ma",))
    await PlacementRunner(redis_client, names).run(registered, {"mb": 2})
    assert await _assigned(redis_client, names, holder_of_ma) == (w1 if holder_of_ma == "w1" else w2)

    # A worker whose heartbeat expired loses its assignment; its models move to the live one.
    await redis_client.delete(names.worker_key(holder_of_ma))
    await PlacementRunner(redis_client, names).run(registered, {"mb": 2})
    assert not await redis_client.exists(names.assignment_key(holder_of_ma))
    assert await _assigned(redis_client, names, other) == {"ma", "mb"}
    status = await read_placement(redis_client, names, ["mb"])
    assert status["mb"]["state"] == "partial"


async def test_max_replicas_label_caps_the_replicas_placed(tmp_path: Path) -> None:
    record = build_record("m", "1", tiny_mlp(tmp_path / "m.onnx"), labels={"max_replicas": "2", "requires": "gpu, x"})
    demand = demand_of(record, 5, 3.0)
    assert demand.replicas == 2 and demand.requires == {"gpu", "x"}
    assert demand.size_bytes == record.size_bytes * 3
    measured = dataclasses.replace(record, size_bytes=123, size_measured=True)
    assert demand_of(measured, 1, 3.0).size_bytes == 123
    # A size measured on each kind of device is used for workers of that kind; the other falls back.
    gpu_only = demand_of(record, 1, 3.0, {"gpu": 500})
    assert (gpu_only.size_bytes, gpu_only.gpu_size_bytes) == (record.size_bytes * 3, 500)
    both = demand_of(measured, 1, 3.0, {"cpu": 123, "gpu": 500})
    assert (both.size_bytes, both.gpu_size_bytes) == (123, 500)


async def test_the_placement_backend_keeps_desired_and_placed_counts_across_a_restart(
    fleet_settings: FleetSettings, redis_client: Any, names: Names, registered: list[str]
) -> None:
    await _beat(redis_client, names, "w1", 400)
    await _beat(redis_client, names, "w2", 500)
    backend = PlacementBackend(fleet_settings)
    await backend.start()
    try:
        assert await backend.replicas("mb") == 0
        await backend.scale("mb", 2)
        await backend.place(["ma", "mb"])
        assert (await backend.replicas("ma"), await backend.replicas("mb")) == (1, 2)  # never scaled: 1
    finally:
        await backend.stop()
    restarted = PlacementBackend(fleet_settings)
    await restarted.start()
    try:
        assert await restarted.replicas("mb") == 2  # read back from Redis
        result = await restarted.place(["ma", "mb"])
        assert len(result.status["mb"].workers) == 2  # the stored desired count, not the default 1
    finally:
        await restarted.stop()


async def test_a_canary_split_counts_every_version_it_sends_traffic_to(
    redis_client: Any, names: Names, tmp_path: Path
) -> None:
    registry = ModelRegistry(redis_client, names)
    artifact = tiny_mlp(tmp_path / "c.onnx")
    for version, measured_mb in (("1", 100), ("2", 200)):
        await registry.register(build_record("canary", version, artifact))
        await registry.record_measured_size("canary", version, measured_mb * MB)
    await _beat(redis_client, names, "w1", 250)
    await PlacementRunner(redis_client, names).run(["canary"], {})
    assert (await read_placement(redis_client, names, ["canary"]))["canary"]["state"] == "placed"  # v1: 100 MB

    await registry.set_traffic("canary", TrafficSplit.of({"1": 90, "2": 10}))  # workers now hold both
    await PlacementRunner(redis_client, names).run(["canary"], {})
    status = (await read_placement(redis_client, names, ["canary"]))["canary"]
    assert status["state"] == "schedule_failed" and status["reason"].startswith("needs 300 MB, largest free ")

    await registry.set_traffic("canary", TrafficSplit.of({"1": 0, "2": 100}))  # v1 only on versioned requests
    await registry.set_default("canary", "2")
    await PlacementRunner(redis_client, names).run(["canary"], {})
    assert (await read_placement(redis_client, names, ["canary"]))["canary"]["state"] == "placed"  # v2: 200 MB


async def test_a_pool_still_starting_its_workers_stores_pending_and_the_gateway_waits(
    redis_client: Any, names: Names, registered: list[str]
) -> None:
    """Right after a pool decision no worker is live yet: the stored status must not be a failure, which the
    gateway's serviceability turns into 503 MODEL_UNAVAILABLE for requests that a moment later are served."""
    from gateway.serviceability import Serviceability, ServiceabilityView

    runner = PlacementRunner(redis_client, names)
    await runner.run(["ma"], {"ma": 1}, expected_workers=1)
    stored = await read_placement(redis_client, names, ["ma"])
    assert stored["ma"]["state"] == "pending", stored
    assert "the pool is starting more workers" in stored["ma"]["reason"]
    await redis_client.set(names.autoscaler_leader_key, "a1")  # an autoscaler is alive (it wrote the above)
    record = await ModelRegistry(redis_client, names).get("ma")
    verdict = await ServiceabilityView(redis_client, names).verdict(record)
    assert verdict.state is Serviceability.STARTING, verdict
    # Once the pool's worker is live the model is placed; with no growth expected a lack of workers is a failure.
    await _beat(redis_client, names, "w1", 400)
    await runner.run(["ma"], {"ma": 1}, expected_workers=1)
    assert (await read_placement(redis_client, names, ["ma"]))["ma"]["state"] == "placed"
    await redis_client.delete(names.worker_key("w1"), names.workers_key)
    await runner.run(["ma"], {"ma": 1})
    assert (await read_placement(redis_client, names, ["ma"]))["ma"]["state"] == "schedule_failed"
