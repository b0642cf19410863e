"""The local stack restarts what dies (with backoff) instead of going down with it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from fleet.client import FleetClient
from fleet.client.stackfile import StackInfo, pid_alive
from fleet.demo.modelgen import tiny_mlp
from fleet.local.procs import Backoff, RestartPolicy
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import KafkaSettings, ModelRegistry, Names

from .procs_util import clean_env, processes_with_env, wait_until

FLEET = [sys.executable, "-m", "fleet.cli"]
FAST = RestartPolicy(initial_s=0.05, max_s=0.2, stable_s=30.0, max_failures=3)


@pytest.mark.parametrize(
    ("ran", "delays"),
    [
        ([0.1, 0.1, 0.1, 0.1], [0.5, 1.0, 2.0, 4.0]),  # doubling
        ([1.0] * 8, [0.5, 1.0, 2.0, 4.0, 5.0, None, None, None]),  # capped at max_s, then gives up
        ([0.1, 0.1, 60.0, 0.1], [0.5, 1.0, 0.5, 1.0]),  # a long run starts the count over
    ],
)
def test_backoff(ran: list[float], delays: list[float | None]) -> None:
    backoff = Backoff(RestartPolicy(initial_s=0.5, max_s=5.0, factor=2.0, stable_s=30.0, max_failures=5))
    assert [backoff.next_delay(r) for r in ran] == delays


def pid_of(stack: LocalStack, role: str) -> int:
    """The pid of ``role`` in stack.json (rewritten once a restarted process is ready)."""
    info = StackInfo.read(stack.config.home)
    assert info is not None
    (pid,) = [p.pid for p in info.processes if p.role == role]
    return pid


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def config(home: Path, **overrides: object) -> StackConfig:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "KAFKA_BOOTSTRAP", "REDIS_URL"))}
    settings: dict[str, object] = {"gateway": False, "workers": 0, "env": env, "restart": FAST, **overrides}
    return StackConfig(home=home, **settings)  # type: ignore[arg-type]


@pytest.mark.integration
async def test_killed_broker_and_redis_are_restarted_with_topics_and_data(tmp_path: Path) -> None:
    async with LocalStack(config(tmp_path / "home")) as stack:
        names = Names(stack.config.namespace)
        client = stack.settings.redis.client()
        try:
            await ModelRegistry(client, names).register(build_record("tiny", "1", tiny_mlp(tmp_path / "t.onnx")))
        finally:
            await client.aclose()

        redis_pid = pid_of(stack, "redis")
        os.kill(redis_pid, signal.SIGKILL)
        await until(lambda: pid_of(stack, "redis") not in (redis_pid, -1), 30, "a new Redis")
        client = stack.settings.redis.client()  # same address; the data came back from its append-only file
        try:
            assert await ModelRegistry(client, names).models() == ["tiny"]
        finally:
            await client.aclose()

        broker_pid = pid_of(stack, "broker")
        os.kill(broker_pid, signal.SIGKILL)
        await until(lambda: pid_of(stack, "broker") not in (broker_pid, -1), 30, "a new broker")
        admin = AIOKafkaAdminClient(**KafkaSettings(bootstrap=stack.kafka_bootstrap).client_kwargs())
        await admin.start()
        try:
            topics = set(await admin.list_topics())
        finally:
            await admin.close()
        assert set(names.model_topics("tiny")) <= topics  # re-created on the empty broker
        assert stack.failure is None
        assert StackInfo.read(stack.config.home) is not None


@pytest.mark.integration
async def test_a_process_that_keeps_dying_makes_the_stack_give_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LocalStack(config(tmp_path / "home")) as stack:
        monkeypatch.setenv("CALF_TANSU_BIN", "/bin/false")  # every restart of the broker exits at once
        os.kill(pid_of(stack, "broker"), signal.SIGKILL)
        await until(lambda: stack.failure is not None, 30, "the supervisor to give up")
        assert stack.failure is not None
        assert "the broker died 4 times in a row" in stack.failure and "giving up" in stack.failure


@pytest.mark.integration
def test_fleet_up_restarts_a_killed_gateway(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    up = subprocess.Popen(
        [*FLEET, "up", "--port", "0", "--no-autoscale", "--workers", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: StackInfo.read(tmp_path) is not None or up.poll() is not None, 60, "stack.json")
        info = StackInfo.read(tmp_path)
        assert info is not None, up.communicate()[0]
        (gateway,) = [p.pid for p in info.processes if p.role == "gateway"]
        os.kill(gateway, signal.SIGKILL)

        def restarted() -> bool:
            now = StackInfo.read(tmp_path)
            return up.poll() is not None or (
                now is not None and any(p.role == "gateway" and p.pid != gateway for p in now.processes)
            )

        wait_until(restarted, 60, "a new gateway in stack.json")
        assert up.poll() is None, up.communicate()[0]  # the stack did not go down with its gateway

        async def ready() -> bool:
            async with FleetClient(info.gateway_url, timeout_s=5) as client:
                return await client.ready()

        assert asyncio.run(ready())  # the same address answers again
        down = subprocess.run([*FLEET, "down"], env=env, capture_output=True, text=True, timeout=60, check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        out, _ = up.communicate(timeout=30)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0, out
    assert "restarting it in" in out and "restarted the gateway" in out
    assert not pid_alive(gateway)
    assert processes_with_env(f"FLEET_HOME={tmp_path}") == []
