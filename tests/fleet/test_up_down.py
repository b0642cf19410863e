"""``fleet up`` / ``status`` / ``down`` as real processes: embedded servers, gateway, clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleet.client import infer_sync
from fleet.client.stackfile import StackInfo, pid_alive
from fleet.demo.modelgen import tiny_mlp

from .procs_util import clean_env, processes_with_env, wait_until, workers_available

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
        assert {p.role for p in info.processes} == {"broker", "redis", "gateway", "autoscaler"}
        assert info.autoscale

        status = run(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"gateway   {info.gateway_url}  ready" in status.stdout
        assert "autoscaler leader " in status.stdout  # the one autoscaler holds the lease
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
    assert down.returncode == 0 and "stopped 4 leftover process(es)" in down.stdout
    assert not [pid for pid in children if pid_alive(pid)]


@pytest.mark.skipif(not workers_available(), reason="workers/ is not there yet")
@pytest.mark.parametrize("mode", [(), ("--per-model-workers",)], ids=["pool", "per-model"])
def test_autoscaled_up_serves_models_registered_later(tmp_path: Path, mode: tuple[str, ...]) -> None:
    env = clean_env(tmp_path)
    up = subprocess.Popen(
        [*FLEET, "up", "--port", "0", "--max-workers", "2", *mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pool = not mode
    models = ("tiny", "tiny2") if pool else ("tiny",)
    try:
        wait_until(lambda: StackInfo.read(tmp_path) is not None or up.poll() is not None, 60, "stack.json")
        info = StackInfo.read(tmp_path)
        assert info is not None and info.autoscale, up.communicate()[0]
        for seed, model in enumerate(models):
            path = tiny_mlp(tmp_path / f"{model}.onnx", seed=seed)
            register = run(env, "models", "register", model, "--artifact", str(path), "--partitions", "2")
            assert register.returncode == 0, register.stdout + register.stderr
            assert "autoscaler starts its workers" in register.stdout
        # No reload: the autoscaler finds the models in the registry and places them on its pool (or spawns a
        # worker per model); a request waits in Kafka meanwhile (generous timeout: a worker start takes a few
        # seconds on a small machine).
        x = np.ones((2, 16), np.float32)
        for model in models:
            assert infer_sync(info.gateway_url, model, {"x": x}, timeout_s=60)["y"].shape == (2, 4)

        status = run(env, "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert [m["model"] for m in report["models"]] == list(models)
        for model in report["models"]:
            assert model["desired"] >= 1 and model["actual"] >= 1 and model["reason"]
            assert model["partitions"] == 2 and model["pinned"] is None
        if pool:  # one pool worker (the fewest) serves both models, following its assignment
            (worker,) = [w for w in report["workers"] if w["state"] == "ready"]
            assert sorted(worker["models"]) == list(models) and worker["follows"], worker
            assert worker["id"].startswith("pool-")
        else:
            assert any(w["models"] == ["tiny"] and w["state"] == "ready" for w in report["workers"])
        assert report["stack"]["autoscale"] and report["gpus"][0]["total"] == 0
        assert run(env, "reload").stdout.startswith("the stack autoscales")

        assert run(env, "down").returncode == 0
        out, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0, out
    assert ("a pool of 1..2 multi-model workers" in out) is pool, out
    assert processes_with_env(f"FLEET_HOME={tmp_path}") == []


def test_placement_without_the_autoscaler_is_refused_before_anything_starts(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    result = run(env, "up", "--port", "0", "--placement", "--no-autoscale", timeout_s=30)
    assert result.returncode != 0
    assert "--placement runs the autoscaler; it cannot go with --no-autoscale" in result.stderr
    assert StackInfo.read(tmp_path) is None and not (tmp_path / "logs").exists()
