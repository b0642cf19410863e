"""An idle fleet's control plane costs the same per round whatever its model count (issue: many models).

An in-process `AutoscalerService` against the real broker and Redis runs rounds over 10 and then 300
registered models with no traffic; the Redis commands a round sends are counted with ``INFO commandstats`` and
must be the same for both. Without a worker, and with one following worker that serves every model and has a
service-stats report for each (what an idle pool looks like after traffic): the stats, the decisions and the
placement cost the same whatever the model count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoscaler import AutoscalerService, AutoscalerSettings
from autoscaler.backends import PlacementBackend
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, ModelRegistry, Names, now_ms
from schemas.residency import WorkerResidency
from schemas.stats import WorkerReport, publish_worker_stats
from schemas.topics import ensure_topics_for_models

pytestmark = pytest.mark.integration

ROUNDS = 4


async def _register(
    fleet_settings: FleetSettings, redis: Any, names: Names, artifact: Path, models: list[str]
) -> None:
    """Registry records written directly (one artifact for all) and their request topics as registration creates
    them (in batches, with the admin timeout of registration: the session's broker holds many topics by now)."""
    registry = ModelRegistry(redis, names)
    for model in models:
        await registry.register(build_record(model, "1", artifact))
    await ensure_topics_for_models(fleet_settings.kafka, names, {m: 1 for m in models})


async def _worker_with_stats(redis: Any, names: Names, models: list[str]) -> None:
    """A live following worker (its heartbeat lists many owned partitions, as a pool worker's does) with a
    service-stats report of each of ``models``."""
    beat = {"state": "ready", "follows": "1", "labels": "", "ts_ms": str(now_ms())}
    beat["partitions"] = ",".join(f"{names.request_topic(m)}:0" for m in models)
    await redis.hset(names.worker_key("w1"), mapping=beat)
    await redis.zadd(names.workers_key, {"w1": now_ms()})
    residency = WorkerResidency("w1", None, None, 0, (), now_ms())
    await redis.set(names.residency_key("w1"), residency.to_bytes())
    reports = {m: WorkerReport("w1", 0.01, 1.0, 5, 3.0, None, 0, now_ms()) for m in models}
    await publish_worker_stats(redis, names, reports, ttl_s=600)


async def _commands(redis: Any) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {k: int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}


async def _per_round(service: AutoscalerService, redis: Any, models: list[str]) -> dict[str, int]:
    """Commands of ``ROUNDS`` rounds, by command, after three that take in the registry's change (a new model's
    decision is written when it is first seen and once more when it turns idle)."""
    assert service.autoscaler is not None
    backend = service.backend

    async def one_round() -> None:
        assert service.autoscaler is not None
        decisions = await service.autoscaler.step()
        assert sorted(d.model for d in decisions) == models  # every model was measured and decided
        assert all(d.desired == 0 for d in decisions) or isinstance(backend, PlacementBackend)
        if isinstance(backend, PlacementBackend):
            placed = await backend.place(models)
            assert sorted(placed.status) == models

    await one_round()
    await one_round()
    await one_round()  # a new model's partitions are quiet from its second sample, its decision kept from the third
    before = await _commands(redis)
    for _ in range(ROUNDS):
        await one_round()
        # Nothing moved: no partition sampled again, no load made again, no model decided again.
        collector = service._collector
        assert collector is not None and service.autoscaler is not None
        assert (collector.last_round.sampled, collector.last_round.rebuilt) == (0, 0), collector.last_round
        assert service.autoscaler.last_round.decided == 0, service.autoscaler.last_round
    after = await _commands(redis)
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


@pytest.mark.parametrize(
    "placement,worker",
    [(False, False), (True, False), (True, True)],
    ids=["local-backend", "placement", "placement-worker-stats"],
)
@pytest.mark.timeout(300)
async def test_redis_commands_per_round_do_not_grow_with_idle_models(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, placement: bool, worker: bool
) -> None:
    artifact = tiny_mlp(tmp_path / "tiny.onnx")
    small = [f"idle{i:03d}" for i in range(10)]
    large = [f"idle{i:03d}" for i in range(300)]
    await _register(fleet_settings, redis_client, names, artifact, small)
    if worker:
        await _worker_with_stats(redis_client, names, small)
    settings = AutoscalerSettings(
        interval_s=3600.0,  # the test drives the rounds itself
        inventory_interval_s=3600.0,
        leader_election=False,
        gpus=0,
        placement=placement,
        log_dir=str(tmp_path),
        fleet=fleet_settings,
    )
    async with AutoscalerService(settings) as service:
        with_10 = await _per_round(service, redis_client, small)
        await _register(fleet_settings, redis_client, names, artifact, large[len(small) :])
        if worker:
            await _worker_with_stats(redis_client, names, large)
        with_300 = await _per_round(service, redis_client, large)
    assert with_10 == with_300, f"10 models: {with_10}; 300 models: {with_300}"
    # A handful of commands a round: the registry epoch, the pins, the round stamps (and the worker list; with
    # stats reports, the live workers and the stats change stream; with a worker, its heartbeat's few fields
    # that placement uses, not the whole hash, its residency and its assignment).
    assert sum(with_300.values()) <= (14 if worker else 8) * ROUNDS, with_300
    assert with_300.get("cmdstat_hgetall") == ROUNDS, with_300  # the pins' hash alone
