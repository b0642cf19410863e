"""``fleet status`` shows the pool: the workers that follow the placement, with their assigned, served and
resident model counts and their state (against the session's Redis; no broker or gateway needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleet.cli.status import StatusReport, render
from schemas import FleetSettings, Names, now_ms
from schemas.limits import MB
from schemas.residency import ResidentModel, WorkerResidency

from .cli_util import connection_args
from .cli_util import run_fleet as fleet

pytestmark = pytest.mark.integration


async def test_status_shows_the_pool_workers_with_their_model_counts(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = now_ms()
    served = [f"m{i}" for i in range(30)]
    workers = {
        "pool-a": {"state": "ready", "follows": "1", "models": ",".join(served), "device": "cpu", "ts_ms": now},
        "pool-b": {"state": "draining", "follows": "1", "models": "m0", "device": "cpu", "ts_ms": now},
        "solo": {"state": "ready", "models": "other", "device": "cpu", "ts_ms": now},  # one per model: not the pool
    }
    for worker_id, fields in workers.items():
        await redis_client.hset(names.worker_key(worker_id), mapping=fields)
        await redis_client.zadd(names.workers_key, {worker_id: now})
    await redis_client.sadd(names.assignment_key("pool-a"), *served, "m30")  # m30 not picked up yet
    resident = tuple(ResidentModel(m, "1", 10 * MB, now, now) for m in served[:3])
    state = WorkerResidency("pool-a", 2048 * MB, 2252 * MB, 30 * MB, resident, now)
    await redis_client.set(names.residency_key("pool-a"), state.to_bytes())
    args = connection_args(fleet_settings, tmp_path / "home", no_gateway=True)

    _, out, _ = await fleet(capsys, "status", "--json", *args)
    pool = {w["worker"]: w for w in json.loads(out)["pool"]}
    assert set(pool) == {"pool-a", "pool-b"}
    a, b = pool["pool-a"], pool["pool-b"]
    assert (a["state"], a["assigned"], a["serving"], a["resident"]) == ("ready", 31, 30, 3)
    assert (a["resident_bytes"], a["budget_bytes"]) == (30 * MB, 2048 * MB)
    assert (b["state"], b["assigned"], b["serving"], b["resident"]) == ("draining", 0, 1, None)

    _, out, _ = await fleet(capsys, "status", *args)
    lines = out.splitlines()
    at = lines.index("pool      2 workers following the placement: 1 draining, 1 ready")
    assert lines[at + 1].split()[:5] == ["WORKER", "STATE", "ASSIGNED", "SERVING", "RESIDENT"]
    assert lines[at + 2].split()[:10] == ["pool-a", "ready", "31", "30", "3", "30", "MB", "of", "2048", "MB"]
    assert lines[at + 3].split()[:6] == ["pool-b", "draining", "0", "1", "-", "-"]
    # The workers list names a pool worker's models by count past a few, the others' in full.
    listed = {line.split()[0]: line for line in lines if " models=" in line}
    assert "models=<30 models>" in listed["pool-a"] and "m29" not in listed["pool-a"]
    assert "models=m0  " in listed["pool-b"] and "models=other  " in listed["solo"]


def test_no_pool_section_without_pool_workers() -> None:
    report = StatusReport("http://gw", True, "k:9092", "redis://r", "fleet")
    assert "pool " not in render(report)
