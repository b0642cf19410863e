"""The pool backend with real ``python -m workers`` pool workers, a real broker and Redis: the autoscaler wakes
the pool from zero for a backlog, grows it so the hot model has replicas on two workers, and drains it when idle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoscaler import AutoscalerService, AutoscalerSettings
from autoscaler.backends import LocalProcessBackend, PoolBackend
from autoscaler.placement_store import read_placement
from schemas import FleetSettings, ModelRecord, Names

from .conftest import MODEL, WORKER_ENV, produce_requests, tiny_requests, wait_until

pytestmark = pytest.mark.integration


async def test_pool_wakes_grows_for_a_hot_model_and_drains_when_idle(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tiny_model: ModelRecord, tmp_path: Path
) -> None:
    settings = AutoscalerSettings(
        interval_s=0.2,
        gpus=0,
        inventory_interval_s=0.2,
        pool=True,
        pool_min_workers=0,
        pool_max_workers=2,
        min_replicas=0,
        max_replicas=2,
        # One worker is assumed to do 1 request/s: the backlog below wants both replicas.
        default_replica_throughput=1.0,
        target_drain_s=5.0,
        scale_down_stabilization_s=1.0,
        idle_to_zero_s=2.0,
        log_dir=str(tmp_path / "workers"),
        fleet=fleet_settings,
    )
    worker_env = {**WORKER_ENV, "FLEET_WORKER_HEARTBEAT_INTERVAL_S": "0.3", "FLEET_WORKER_CACHE_DIR": str(tmp_path)}
    async with AutoscalerService(settings, worker_env=worker_env) as service:
        backend = service.backend
        assert isinstance(backend, PoolBackend) and isinstance(backend.runner, LocalProcessBackend)
        runner = backend.runner
        assert await backend.pool_workers() == 0  # nothing wanted: no worker

        requests = tiny_requests(40)
        await produce_requests(fleet_settings, names, requests)
        await wait_until(lambda: len(runner.workers()) == 2, 20, "two pool workers for the backlog")
        woken = backend.last_size
        assert woken is not None and woken.desired == 2

        async def on_two_workers() -> bool:
            status = (await read_placement(redis_client, names, [MODEL])).get(MODEL, {})
            return len([w for w in status.get("workers", "").split(",") if w]) == 2

        await wait_until(on_two_workers, 30, "the hot model placed on both pool workers")

        def titles() -> list[str]:  # what `ps` shows (workers.proctitle)
            return [Path(f"/proc/{w.pid}/cmdline").read_bytes().split(b"\0")[0].decode() for w in runner.workers()]

        expected = [f"fleet-worker {w.worker_id} pool: 1 models, " for w in runner.workers()]
        await wait_until(lambda: all(t.startswith(e) for t, e in zip(titles(), expected, strict=True)), 10, "titles")
        keys = [names.result_key(r.id) for r in requests]

        async def all_results() -> bool:
            return bool(await redis_client.exists(*keys) == len(keys))

        await wait_until(all_results, 60, "a result for every request")

        # Idle: the model goes to zero after idle_to_zero_s, the pool follows after its window.
        await wait_until(lambda: not runner.workers(), 30, "the idle pool drained")
        assert len(runner.exits) == 2
        assert all(e.requested and e.returncode == 0 and not e.killed for e in runner.exits)
        assert all(e.worker_id.startswith("pool-") for e in runner.exits)
