"""Fixtures for whole-path tests: a registered model, an in-process gateway, worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import BatchingConfig, FleetSettings, ModelRecord, ModelRegistry, Names
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings


def service_env(settings: FleetSettings, **extra: str) -> dict[str, str]:
    """Environment for a service subprocess pointing at the same servers and namespace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    kafka = settings.kafka
    env.update(
        FLEET_NAMESPACE=settings.namespace,
        FLEET_KAFKA_BOOTSTRAP=kafka.bootstrap,
        FLEET_KAFKA_FETCH_MAX_WAIT_MS=str(kafka.fetch_max_wait_ms),
        FLEET_KAFKA_SESSION_TIMEOUT_MS=str(kafka.session_timeout_ms),
        FLEET_KAFKA_HEARTBEAT_INTERVAL_MS=str(kafka.heartbeat_interval_ms),
        FLEET_KAFKA_REQUEST_TIMEOUT_MS=str(kafka.request_timeout_ms),
        FLEET_REDIS_URL=settings.redis.url,
        **extra,
    )
    return env


@pytest.fixture
async def tiny_model(fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path) -> ModelRecord:
    """The tiny MLP registered as version 1 (batching up to 32 rows, 5 ms queue delay)."""
    record = build_record(
        "tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"), batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=5)
    )
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, "tiny")
    return record


@pytest.fixture
async def gateway(fleet_settings: FleetSettings, names: Names) -> AsyncIterator[Gateway]:
    """An in-process gateway on an ephemeral port."""
    settings = GatewaySettings(fleet=fleet_settings, port=0, default_timeout_s=20.0)
    async with Gateway(settings) as gw:
        await gw.wait_ready()
        yield gw


@pytest.fixture
async def worker(fleet_settings: FleetSettings, tiny_model: ModelRecord) -> AsyncIterator[Worker]:
    """An in-process worker serving ``tiny``, ready (group joined, partitions assigned)."""
    async with Worker(WorkerSettings(models=("tiny",), fleet=fleet_settings)) as w:
        await w.wait_ready(30)
        yield w


class WorkerProcess:
    """``python -m workers`` as a subprocess with its own id."""

    def __init__(self, settings: FleetSettings, models: str, log_dir: Path, **extra: str) -> None:
        self.worker_id = f"w-{uuid.uuid4().hex[:6]}"
        self.log_path = log_dir / f"{self.worker_id}.log"
        env = service_env(settings, FLEET_WORKER_MODELS=models, FLEET_WORKER_ID=self.worker_id, **extra)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workers"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout_s)


async def wait_worker_ready(redis: Any, names: Names, worker: WorkerProcess, timeout_s: float = 30.0) -> None:
    """Wait for the worker's heartbeat to say ready with at least one partition assigned."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.log()}")
        state = await redis.hget(names.worker_key(worker.worker_id), "state")
        if state == b"ready":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker not ready after {timeout_s}s:\n{worker.log()}")


@pytest.fixture
def worker_factory(fleet_settings: FleetSettings, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts worker subprocesses; every one still alive at teardown is killed (and that is reported)."""
    started: list[WorkerProcess] = []

    def start(models: str = "tiny", **extra: str) -> WorkerProcess:
        worker = WorkerProcess(fleet_settings, models, tmp_path, **extra)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.wait(5)
