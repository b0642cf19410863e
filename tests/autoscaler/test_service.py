"""The autoscaler service in process (registry discovery, metrics, inventory) and as ``python -m autoscaler``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from autoscaler import AutoscalerService, AutoscalerSettings, DecisionStore, LocalProcessBackend, read_inventory
from autoscaler.backends import PlacementBackend, settings_env
from autoscaler.placement import Placement
from autoscaler.placement_store import read_placement
from autoscaler.policy import Decision
from fleet.local.servers import free_port
from schemas import FleetSettings, ModelRecord, Names, SettingsError
from workers import Worker, WorkerSettings

from .conftest import MODEL, wait_until

pytestmark = pytest.mark.integration


async def test_service_discovers_models_and_reports(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tiny_model: ModelRecord, tmp_path: Path
) -> None:
    port = free_port()
    settings = AutoscalerSettings(
        interval_s=0.1, metrics_port=port, gpus=0, inventory_interval_s=0.2, log_dir=str(tmp_path), fleet=fleet_settings
    )
    async with AutoscalerService(settings) as service:
        assert isinstance(service.backend, LocalProcessBackend) and service.backend.gpu_count == 0
        assert service.autoscaler is not None
        # No model configured: the registered one is found and measured (no backlog, so it stays at zero).
        decision = await wait_until(lambda: service.autoscaler and service.autoscaler.decisions.get(MODEL), 10)
        assert decision.desired == 0 and decision.inputs["lag"] == 0
        # ... and recorded for `fleet status`
        stored = await wait_until(lambda: DecisionStore(redis_client, names).read([MODEL]), 10, "a stored decision")
        assert stored[MODEL].desired == 0 and stored[MODEL].reason == decision.reason
        (inventory,) = await read_inventory(redis_client, names)
        assert (inventory.total, inventory.allocated, inventory.available) == (0, 0, 0)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            text = await response.text()
        assert f'fleet_autoscaler_replicas_desired{{model="{MODEL}"}} 0.0' in text
        assert 'fleet_gpus{state="total"} 0.0' in text
    assert service.backend.workers() == []


def _env(fleet_settings: FleetSettings, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(settings_env(fleet_settings), FLEET_AUTOSCALER_LOG_DIR=str(tmp_path), **extra)
    return env


def _start_autoscaler(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "autoscaler"], env=env, stdout=log, stderr=subprocess.STDOUT)


async def test_python_m_autoscaler_stops_on_sigterm(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    env = _env(
        fleet_settings,
        tmp_path,
        FLEET_AUTOSCALER_MODELS=MODEL,
        FLEET_AUTOSCALER_INTERVAL_S="0.2",
        FLEET_AUTOSCALER_GPUS="0",
        FLEET_AUTOSCALER_INVENTORY_INTERVAL_S="0.2",
    )
    log_path = tmp_path / "autoscaler.log"
    process = _start_autoscaler(env, log_path)
    try:
        # Ready once its first GPU inventory report is in Redis.
        await wait_until(lambda: process.poll() is not None or read_inventory(redis_client, names), 30, "a report")
        assert process.poll() is None, log_path.read_text()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "autoscaler started: backend local" in output and "autoscaler stopping" in output


def test_python_m_autoscaler_rejects_bad_settings(fleet_settings: FleetSettings, tmp_path: Path) -> None:
    env = _env(fleet_settings, tmp_path, FLEET_AUTOSCALER_BACKEND="nomad")
    result = subprocess.run([sys.executable, "-m", "autoscaler"], env=env, capture_output=True, timeout=30)
    assert result.returncode == 2
    assert b"backend 'nomad' must be one of local, kubernetes" in result.stderr


async def test_placement_mode_places_models_on_a_following_worker(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tiny_model: ModelRecord, tmp_path: Path
) -> None:
    settings = AutoscalerSettings(
        interval_s=0.2, gpus=0, inventory_interval_s=0.2, placement=True, min_replicas=1, fleet=fleet_settings
    )
    following = WorkerSettings(
        follow_assignment=True,
        worker_id="follower",
        device="cpu",
        fleet=fleet_settings,
        heartbeat_interval_s=0.3,
        drain_timeout_s=10,
        cache_dir=str(tmp_path / "cache"),
    )
    async with Worker(following) as worker, AutoscalerService(settings) as service:
        assert isinstance(service.backend, PlacementBackend)
        await wait_until(lambda: [c.model for c in worker.consumers] == [MODEL] or None, 20, "the model served")
        status = await read_placement(redis_client, names, [MODEL])
        assert status[MODEL]["state"] == "placed" and status[MODEL]["workers"] == "follower"
        decision = await wait_until(
            lambda: service.autoscaler and (d := service.autoscaler.decisions.get(MODEL)) and d.current == 1 and d,
            10,
            "a decision that counts the placed replica",
        )
        assert decision.desired == 1


async def test_spawned_workers_serve_metrics_that_prometheus_discovers(
    fleet_settings: FleetSettings, tiny_model: ModelRecord, tmp_path: Path
) -> None:
    port, first = free_port(), free_port()
    settings = AutoscalerSettings(
        interval_s=0.2,
        gpus=0,
        metrics_port=port,
        pinned=(f"{MODEL}=1",),
        worker_metrics_ports=f"{first}-{first + 3}",
        log_dir=str(tmp_path),
        fleet=fleet_settings,
    )
    async with AutoscalerService(settings) as service, aiohttp.ClientSession() as http:
        backend = service.backend
        assert isinstance(backend, LocalProcessBackend)
        await wait_until(lambda: [w for w in backend.workers() if w.ready_latency_s is not None], 60, "a ready worker")
        async with http.get(f"http://127.0.0.1:{port}/sd/workers") as response:
            assert response.status == 200
            (group,) = await response.json()
        (worker,) = backend.workers()
        assert group == {
            "targets": [f"127.0.0.1:{first}"],
            "labels": {"model": MODEL, "worker_id": worker.worker_id},
        }
        async with http.get(f"http://{group['targets'][0]}/metrics") as response:
            assert response.status == 200
            assert "fleet_worker_" in await response.text()


def test_worker_metrics_ports_must_be_a_range() -> None:
    assert AutoscalerSettings(worker_metrics_ports="9200-9203").worker_metrics_port_range() == range(9200, 9204)
    assert AutoscalerSettings(worker_metrics_ports="9200").worker_metrics_port_range() == range(9200, 9201)
    assert AutoscalerSettings().worker_metrics_port_range() is None
    for bad in ("9203-9200", "0-3", "a-b", "9200-70000"):
        with pytest.raises(SettingsError, match="worker_metrics_ports"):
            AutoscalerSettings(worker_metrics_ports=bad)


class _FlakyPlacement(PlacementBackend):
    """A placement backend whose first round raises an error nobody expected (a bug, an untranslated error)."""

    def __init__(self, fleet: FleetSettings) -> None:
        super().__init__(fleet)
        self.rounds = 0

    async def place(
        self, models: Sequence[str], *, decisions: Mapping[str, Decision] | None = None, force: bool = False
    ) -> Placement:
        self.rounds += 1
        if self.rounds == 1:
            raise RuntimeError("placement bug in round 1")
        return await super().place(models, decisions=decisions, force=force)


async def test_a_crashed_placement_loop_is_logged_and_started_again(
    fleet_settings: FleetSettings, tiny_model: ModelRecord, caplog: pytest.LogCaptureFixture
) -> None:
    settings = AutoscalerSettings(interval_s=0.05, gpus=0, inventory_interval_s=0.2, fleet=fleet_settings)
    backend = _FlakyPlacement(fleet_settings)
    with caplog.at_level(logging.ERROR, logger="fleet.autoscaler"):
        async with AutoscalerService(settings, backend=backend):
            # Before: the first round's error ended the placement task silently and no round ever ran again.
            await wait_until(lambda: backend.rounds >= 3, 20, "placement rounds after the crash")
    (crash,) = [r for r in caplog.records if "placement loop crashed" in r.getMessage()]
    assert crash.exc_info is not None and "placement bug in round 1" in str(crash.exc_info[1])


async def test_the_control_loop_outlives_an_unreachable_registry(
    fleet_settings: FleetSettings, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on the Redis port: the registry raises BackendUnavailableError on every round.
    dead_redis = dataclasses.replace(fleet_settings.redis, url=f"redis://127.0.0.1:{free_port()}/0")
    fleet = dataclasses.replace(fleet_settings, redis=dead_redis)
    settings = AutoscalerSettings(
        interval_s=0.05, gpus=0, inventory_interval_s=0.2, leader_election=False, backend="local", fleet=fleet
    )

    def unreadable_rounds() -> int:
        return sum("model registry unreadable" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="fleet.autoscaler"):
        service = AutoscalerService(settings, backend=_NoWorkers())
        async with service:
            # Before: the first round raised out of the loop; the loop ended (and ``python -m autoscaler`` exited 1,
            # draining every local worker) because Redis hiccuped once.
            await wait_until(lambda: unreadable_rounds() >= 3, 20, "rounds that outlive the outage")
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]


class _NoWorkers:
    """A backend with nothing to run (the control loop's rounds are what the test watches)."""

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to release."""

    async def replicas(self, model: str) -> int:
        """Never any worker."""
        return 0

    async def scale(self, model: str, replicas: int) -> None:
        """Nothing to scale."""
