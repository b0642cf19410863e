"""``fleet up`` / ``status`` / ``down`` as real processes: embedded servers, gateway, clean stop."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.stackfile import StackInfo, pid_alive

from .procs_util import clean_env, processes_with_env, wait_until

pytestmark = pytest.mark.integration

FLEET = [sys.executable, "-m", "fleet.cli"]


def run(env: dict[str, str], *argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLEET, *argv], env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def test_up_status_down_leaves_nothing_behind(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    up = subprocess.Popen(
        [*FLEET, "up", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: StackInfo.read(tmp_path) is not None or up.poll() is not None, 60, "stack.json")
        info = StackInfo.read(tmp_path)
        assert info is not None, up.communicate()[0]
        assert info.pid == up.pid
        assert {p.role for p in info.processes} == {"broker", "redis", "gateway"}

        status = run(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"gateway   {info.gateway_url}  ready" in status.stdout
        assert run(env, "up", "--port", "0").returncode == 1  # one stack per home

        down = run(env, "down")
        assert down.returncode == 0 and "stack stopped" in down.stdout
        out, _ = up.communicate(timeout=30)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0
    assert "ready; Ctrl-C or `fleet down` stops the stack" in out and out.rstrip().endswith("stack stopped")
    assert not [p for p in info.processes if pid_alive(p.pid)]
    assert processes_with_env(f"FLEET_HOME={tmp_path}") == []
    assert StackInfo.read(tmp_path) is None
    assert run(env, "status").returncode == 1  # nothing answers any more


def test_down_cleans_up_after_a_killed_owner(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    up = subprocess.Popen([*FLEET, "up", "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: StackInfo.read(tmp_path) is not None or up.poll() is not None, 60, "stack.json")
    info = StackInfo.read(tmp_path)
    assert info is not None
    up.send_signal(signal.SIGKILL)
    up.wait()
    children = [p.pid for p in info.processes]
    assert all(pid_alive(pid) for pid in children)  # own sessions: they outlive their parent
    down = run(env, "down")
    assert down.returncode == 0 and "stopped 3 leftover process(es)" in down.stdout
    assert not [pid for pid in children if pid_alive(pid)]
