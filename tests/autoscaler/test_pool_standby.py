"""The local pool runner's warm standby (real ``python -m workers`` processes): a scale-up activates it and a new
one takes its place; stop() ends it; it exits when the autoscaler is SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from autoscaler import LocalProcessBackend
from autoscaler.backends import settings_env
from schemas import FleetSettings, Names

from .conftest import WORKER_ENV, pid_exists, wait_until

pytestmark = pytest.mark.integration

POOL = "pool"


def _standing_by(log_dir: Path, worker_id: str) -> bool:
    path = log_dir / f"{worker_id}.log"
    return path.exists() and "standing by" in path.read_text()


async def test_a_scale_up_activates_the_standby_and_a_new_one_replaces_it(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    log_dir = tmp_path / "workers"
    backend = LocalProcessBackend(
        fleet_settings, log_dir=log_dir, extra_env=WORKER_ENV, gpu_count=0, drain_timeout_s=20.0, pool=True, standby=1
    )
    async with backend:
        await backend.scale(POOL, 0)  # nothing starting: the standby is started
        (standby,) = backend.standbys()
        assert backend.workers() == [] and await backend.replicas(POOL) == 0
        await wait_until(lambda: _standing_by(log_dir, standby.worker_id), 60, "the standby's imports")
        assert await redis_client.exists(names.worker_key(standby.worker_id)) == 0  # not a member: no heartbeat

        await backend.scale(POOL, 1)
        (worker,) = backend.workers(POOL)
        assert (worker.worker_id, worker.pid) == (standby.worker_id, standby.pid)  # activated, not spawned
        assert backend.standbys() == []  # no new one while the activated one starts
        await backend.wait_ready(POOL, 1, timeout_s=60)
        assert await redis_client.hget(names.worker_key(worker.worker_id), "state") == b"ready"
        (replacement,) = await wait_until(backend.standbys, 10, "a new standby")
        assert replacement.worker_id != worker.worker_id
        pids = [worker.pid, replacement.pid]
    assert backend.workers() == [] and backend.standbys() == []
    assert not any(pid_exists(pid) for pid in pids)
    ends = {e.worker_id: e for e in backend.exits}
    assert ends[worker.worker_id].returncode == 0 and ends[worker.worker_id].model == POOL
    assert ends[replacement.worker_id].requested and ends[replacement.worker_id].model == ""


_EMBEDDER = """
import asyncio, os, sys
from autoscaler import LocalProcessBackend
from schemas import FleetSettings, load

async def main():
    backend = LocalProcessBackend(load(FleetSettings, os.environ, ""), log_dir=sys.argv[1], gpu_count=0,
                                  extra_env={"FLEET_WORKER_DEVICE": "cpu"}, pool=True, standby=1)
    await backend.scale("pool", 0)
    (standby,) = backend.standbys()
    print(standby.pid, standby.worker_id, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


async def test_a_standby_exits_when_the_autoscaler_is_killed(fleet_settings: FleetSettings, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(settings_env(fleet_settings), PYTHONPATH=os.getcwd())
    embedder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _EMBEDDER, str(tmp_path), env=env, stdout=asyncio.subprocess.PIPE
    )
    assert embedder.stdout is not None
    try:
        pid, worker_id = (await asyncio.wait_for(embedder.stdout.readline(), 60)).decode().split()
        standby_pid = int(pid)
        await wait_until(lambda: _standing_by(tmp_path, worker_id), 60, "the standby's imports")
    finally:
        embedder.kill()
        await embedder.wait()
    try:
        await wait_until(lambda: not pid_exists(standby_pid), 20, "the orphaned standby's exit")
    finally:
        if pid_exists(standby_pid):
            os.kill(standby_pid, signal.SIGKILL)  # do not leak it when the assertion fails
    assert "stood down before its activation" in (tmp_path / f"{worker_id}.log").read_text()
