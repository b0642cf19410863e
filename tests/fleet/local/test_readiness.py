"""fleet.local.readiness: waiting for a process to be ready (real subprocesses), port checks (real sockets)
and the worker heartbeat probe (real Redis)."""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleet.client.errors import StackError
from fleet.local.procs import ServiceProcess
from fleet.local.readiness import can_listen, wait_ready, worker_ready
from fleet.local.servers import accepts
from schemas import FleetSettings, Names


@pytest.fixture
async def sleeper(tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    proc = ServiceProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], {}, tmp_path / "s.log")
    proc.start()
    yield proc
    await proc.stop(5.0)


async def answers(*values: bool) -> AsyncGenerator[bool, None]:
    for value in values:
        yield value
    while True:
        yield False


async def test_wait_ready_returns_once_the_probe_says_ready(sleeper: ServiceProcess) -> None:
    await wait_ready(sleeper, answers(False, False, True), timeout_s=30.0)


async def test_a_process_that_exits_first_fails_with_its_log(tmp_path: Path) -> None:
    code = "import sys; print('bad config: FLEET_X'); sys.exit(3)"
    proc = ServiceProcess("gateway", [sys.executable, "-c", code], {}, tmp_path / "g.log")
    proc.start()
    with pytest.raises(StackError, match=r"gateway exited with status 3 before it was ready(.|\n)*bad config"):
        await wait_ready(proc, answers(), timeout_s=60.0)


async def test_a_ready_answer_while_ours_is_dead_does_not_count(tmp_path: Path) -> None:
    proc = ServiceProcess("worker", [sys.executable, "-c", "pass"], {}, tmp_path / "w.log")
    proc.start()
    assert await proc.wait(30.0)  # it exited
    with pytest.raises(StackError, match="exited with status 0"):
        await wait_ready(proc, answers(True, True), timeout_s=60.0)


async def test_never_ready_times_out(sleeper: ServiceProcess) -> None:
    with pytest.raises(StackError, match="sleeper not ready after 0s"):
        await wait_ready(sleeper, answers(), timeout_s=0.1)


def test_ports() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert accepts(port)
        assert not can_listen("127.0.0.1", port)
    assert not accepts(port)
    assert can_listen("127.0.0.1", port)


async def test_worker_ready_reads_this_processes_heartbeat(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, sleeper: ServiceProcess
) -> None:
    probe = worker_ready(fleet_settings, sleeper)
    try:
        assert await anext(probe) is False
        key = names.worker_key(sleeper.name)
        await redis_client.hset(key, mapping={"state": "ready", "pid": "1"})  # a stale hash of another process
        assert await anext(probe) is False
        await redis_client.hset(key, mapping={"state": "starting", "pid": str(sleeper.pid)})
        assert await anext(probe) is False
        await redis_client.hset(key, mapping={"state": "ready"})
        assert await anext(probe) is True
    finally:
        await probe.aclose()
