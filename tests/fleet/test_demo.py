"""``fleet demo`` end to end as a subprocess: its own stack, and a stack that ``fleet up`` runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.client.stackfile import StackInfo

from .procs_util import clean_env, processes_with_env, wait_until, workers_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not workers_available(), reason="workers/ is not there yet"),
]

FLEET = [sys.executable, "-m", "fleet.cli"]


def check_report(out: str) -> None:
    assert re.search(r"PASS demo-blobs v1: probs FP32\[2, 3\]", out), out
    assert re.search(r"PASS demo-blobs v2: probs FP32\[2, 3\]", out), out
    accuracies = [float(a) for a in re.findall(r"v\d: accuracy ([\d.]+)% over HTTP", out)]
    assert len(accuracies) == 2 and accuracies[1] > 90.0, out
    assert re.search(r"latency p50 [\d.]+ ms  p90 [\d.]+ ms  p99 [\d.]+ ms  over 600 requests; \d+ req/s", out), out


def test_demo_with_its_own_stack(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    done = subprocess.run(
        [*FLEET, "demo", "--trainer", "numpy"], env=env, capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    check_report(done.stdout)
    assert done.stdout.rstrip().endswith("stack stopped")
    assert processes_with_env(f"FLEET_HOME={tmp_path}") == []
    assert StackInfo.read(tmp_path) is None


@pytest.mark.parametrize("autoscale", [True, False], ids=["autoscaled", "fixed-workers"])
def test_demo_on_a_running_stack(tmp_path: Path, autoscale: bool) -> None:
    env = clean_env(tmp_path)
    mode = [] if autoscale else ["--no-autoscale"]
    up = subprocess.Popen(
        [*FLEET, "up", "--port", "0", *mode], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: StackInfo.read(tmp_path) is not None or up.poll() is not None, 60, "stack.json")
        demo = subprocess.run(
            [*FLEET, "demo", "--trainer", "numpy"], env=env, capture_output=True, text=True, timeout=90, check=False
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "using the running fleet" in demo.stdout
        check_report(demo.stdout)
        status = subprocess.run([*FLEET, "status"], env=env, capture_output=True, text=True, timeout=30, check=False)
        assert status.returncode == 0 and re.search(r"ready\s+models=demo-blobs", status.stdout), status.stdout
        assert re.search(r"^\s+demo-blobs\s+2\s", status.stdout, re.MULTILINE), status.stdout  # default version 2
        down = subprocess.run([*FLEET, "down"], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert down.returncode == 0
        out, _ = up.communicate(timeout=60)
        # A fixed stack restarts its workers for the new model; an autoscaled one needs no reload.
        assert ("workers restarted, serving demo-blobs" in out) is not autoscale, out
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0
    assert processes_with_env(f"FLEET_HOME={tmp_path}") == []
