"""LocalProcessBackend with real ``python -m workers`` processes, alone and driven by the control loop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from autoscaler import (
    Autoscaler,
    AutoscalerSettings,
    LagCollector,
    LocalProcessBackend,
    PinStore,
    ServiceStatsReader,
    WorkerPhase,
)
from autoscaler.backends import settings_env
from schemas import FleetSettings, ModelRecord, Names

from .conftest import MODEL, pid_exists, produce_requests, tiny_requests, wait_until

pytestmark = pytest.mark.integration


async def test_scale_up_drain_one_and_stop(
    local_backend: LocalProcessBackend, tiny_model: ModelRecord, redis_client: Any, names: Names
) -> None:
    await local_backend.scale(MODEL, 2)
    assert await local_backend.replicas(MODEL) == 2
    ready = await local_backend.wait_ready(MODEL, 2, timeout_s=60)
    for worker in ready:
        assert await redis_client.hget(names.worker_key(worker.worker_id), "state") == b"ready"
        assert worker.ready_latency_s is not None and worker.ready_latency_s > 0
    assert len(local_backend.ready_latencies) == 2
    oldest, newest = ready

    await local_backend.scale(MODEL, 1)
    # The drain happens in the background: the stopping worker no longer counts at once.
    assert await local_backend.replicas(MODEL) == 1
    ended = await wait_until(
        lambda: [e for e in local_backend.exits if e.worker_id == newest.worker_id], 30, "the newest worker's exit"
    )
    assert ended[0].returncode == 0 and ended[0].requested and not ended[0].killed
    assert await redis_client.hget(names.worker_key(newest.worker_id), "state") == b"stopped"
    assert not pid_exists(newest.pid)
    assert [(w.worker_id, w.phase) for w in local_backend.workers(MODEL)] == [(oldest.worker_id, WorkerPhase.READY)]

    await local_backend.stop()
    assert local_backend.workers() == [] and not pid_exists(oldest.pid)
    assert sorted(e.returncode for e in local_backend.exits) == [0, 0]
    assert await local_backend.replicas(MODEL) == 0
    with pytest.raises(Exception, match="stopped"):
        await local_backend.scale(MODEL, 1)


async def test_backlog_wakes_the_model_and_drains(
    local_backend: LocalProcessBackend,
    tiny_model: ModelRecord,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
) -> None:
    """Requests waiting with no worker: the controller scales 0 -> 1, the backlog drains, every result lands."""
    requests = tiny_requests(60)
    await produce_requests(fleet_settings, names, requests)
    settings = AutoscalerSettings(
        models=(MODEL,),
        interval_s=0.2,
        target_drain_s=5.0,
        max_replicas=2,
        scale_down_stabilization_s=60.0,
        idle_to_zero_s=600.0,
        fleet=fleet_settings,
    )
    assert await local_backend.replicas(MODEL) == 0
    async with LagCollector(fleet_settings, half_life_s=1.0) as collector:
        stats = ServiceStatsReader(redis_client, names)
        async with Autoscaler(settings, local_backend, collector, stats, pins=PinStore(redis_client, names)) as scaler:
            await wait_until(lambda: local_backend.replicas(MODEL), 10, "a scale-up from zero")
            first = scaler.decisions[MODEL]
            assert first.current == 0 and first.desired >= 1 and "activation" in first.reason
            await local_backend.wait_ready(MODEL, 1, timeout_s=60)
            keys = [names.result_key(r.id) for r in requests]

            async def all_results() -> bool:
                return bool(await redis_client.exists(*keys) == len(keys))

            await wait_until(all_results, 60, "a result for every request")
            await wait_until(lambda: scaler.decisions[MODEL].inputs["lag"] == 0, 20, "lag back to 0")
            assert await local_backend.replicas(MODEL) >= 1


class CountingBackend:
    """Delegates to the real backend and counts control rounds (one replicas() call per model per round)."""

    def __init__(self, inner: LocalProcessBackend) -> None:
        self.inner = inner
        self.rounds = 0
        self.scaled: list[int] = []

    async def replicas(self, model: str) -> int:
        self.rounds += 1
        return await self.inner.replicas(model)

    async def scale(self, model: str, replicas: int) -> None:
        self.scaled.append(replicas)
        await self.inner.scale(model, replicas)


async def test_pin_wins_over_backlog_until_unpinned(
    local_backend: LocalProcessBackend,
    tiny_model: ModelRecord,
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
) -> None:
    await produce_requests(fleet_settings, names, tiny_requests(20))
    pins = PinStore(redis_client, names)
    await pins.pin(MODEL, 0)
    backend = CountingBackend(local_backend)
    settings = AutoscalerSettings(models=(MODEL,), interval_s=0.1, max_replicas=2, fleet=fleet_settings)
    async with LagCollector(fleet_settings) as collector:
        stats = ServiceStatsReader(redis_client, names)
        async with Autoscaler(settings, backend, collector, stats, pins=pins) as scaler:
            await wait_until(lambda: backend.rounds >= 3, 10, "three control rounds")
            decision = scaler.decisions[MODEL]
            assert decision.pinned and decision.desired == 0 and decision.inputs["lag"] == 20
            assert backend.scaled == [] and await local_backend.replicas(MODEL) == 0
            await pins.unpin(MODEL)
            await wait_until(lambda: backend.scaled, 10, "a scale-up after the unpin")
            assert not scaler.decisions[MODEL].pinned and backend.scaled[0] >= 1
            await local_backend.wait_ready(MODEL, 1, timeout_s=60)


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for the interpreter (it ignores ``-m workers``) to stage misbehaving workers."""
    path = tmp_path / "fake-python"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


async def test_a_worker_that_ignores_sigterm_is_killed(fleet_settings: FleetSettings, tmp_path: Path) -> None:
    python = fake_python(tmp_path, "trap '' TERM\ntouch \"$0.trapped\"\nexec sleep 60")
    backend = LocalProcessBackend(fleet_settings, log_dir=tmp_path, python=python, gpu_count=0, drain_timeout_s=0.3)
    async with backend:
        await backend.scale("m", 1)
        (worker,) = backend.workers("m")
        assert worker.phase is WorkerPhase.STARTING
        await wait_until(Path(f"{python}.trapped").exists, 10, "the SIGTERM trap")
        await backend.scale("m", 0)
        (ended,) = await wait_until(lambda: list(backend.exits), 10, "the kill")
        assert ended.requested and ended.killed and ended.returncode == -signal.SIGKILL
        assert ended.drain_s >= 0.3 and not pid_exists(worker.pid)


async def test_crashing_workers_are_respawned_with_backoff(fleet_settings: FleetSettings, tmp_path: Path) -> None:
    backend = LocalProcessBackend(fleet_settings, log_dir=tmp_path, python=fake_python(tmp_path, "exit 3"), gpu_count=0)
    async with backend:
        await backend.scale("m", 2)
        await wait_until(lambda: len(backend.exits) == 2, 10, "both crashes")
        assert {(e.returncode, e.requested) for e in backend.exits} == {(3, False)}
        assert await backend.replicas("m") == 0
        await backend.scale("m", 2)  # inside the backoff: nothing is spawned
        assert await backend.replicas("m") == 0 and backend.workers() == []


_EMBEDDER = """
import asyncio, os, sys
from autoscaler import LocalProcessBackend
from schemas import FleetSettings, load

async def main():
    backend = LocalProcessBackend(load(FleetSettings, os.environ, ""), log_dir=sys.argv[1], gpu_count=0,
                                  extra_env={"FLEET_WORKER_DEVICE": "cpu"})
    await backend.scale("tiny", 1)
    (worker,) = await backend.wait_ready("tiny", 1, 60)
    print(worker.pid, worker.worker_id, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


async def test_workers_drain_when_the_autoscaler_is_killed(
    tiny_model: ModelRecord, fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    """SIGKILL leaves the autoscaler no chance to stop its workers: the kernel's parent-death signal does it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(settings_env(fleet_settings), PYTHONPATH=os.getcwd())
    embedder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _EMBEDDER, str(tmp_path), env=env, stdout=asyncio.subprocess.PIPE
    )
    assert embedder.stdout is not None
    try:
        line = await asyncio.wait_for(embedder.stdout.readline(), 60)
        pid, worker_id = line.decode().split()
        worker_pid = int(pid)
    finally:
        embedder.kill()
        await embedder.wait()
    # The orphan is reparented to init, which reaps it: gone means it exited (after draining on SIGTERM).
    try:
        await wait_until(lambda: not pid_exists(worker_pid), 20, "the orphaned worker's exit")
    finally:
        if pid_exists(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)  # do not leak it when the assertion fails
    # It drained: the heartbeat's last word is the graceful "stopped".
    assert await redis_client.hget(names.worker_key(worker_id), "state") == b"stopped"
