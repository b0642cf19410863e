"""Fixtures for the backend and service tests: a registered tiny model, a local process backend, requests."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from autoscaler import LocalProcessBackend
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import (
    BatchingConfig,
    FleetSettings,
    InferenceRequest,
    ModelRecord,
    ModelRegistry,
    Names,
    ReplyAddress,
    ReplyKind,
    Tensor,
)
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.topics import ensure_model_topics

MODEL = "tiny"

#: Worker settings that suit tests (CPU only; the stop drains quickly).
WORKER_ENV = {"FLEET_WORKER_DEVICE": "cpu", "FLEET_WORKER_DRAIN_TIMEOUT_S": "10"}


@pytest.fixture
async def tiny_model(fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path) -> ModelRecord:
    """The tiny MLP registered as tiny:1 with its topics (4 partitions)."""
    record = build_record(
        MODEL, "1", tiny_mlp(tmp_path / "tiny.onnx"), batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=5)
    )
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, MODEL)
    return record


@pytest.fixture
async def local_backend(fleet_settings: FleetSettings, tmp_path: Path) -> AsyncIterator[LocalProcessBackend]:
    """A local backend without GPUs; at teardown it is stopped and no worker process may be left."""
    backend = LocalProcessBackend(
        fleet_settings, log_dir=tmp_path / "workers", extra_env=WORKER_ENV, gpu_count=0, drain_timeout_s=20.0
    )
    try:
        yield backend
    finally:
        pids = [w.pid for w in backend.workers()]
        await backend.stop()
        assert backend.workers() == []
        for pid in pids:
            assert not pid_exists(pid), f"worker pid {pid} left behind"


def pid_exists(pid: int) -> bool:
    """True while ``pid`` is a process (a zombie counts: it was not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_until(condition: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met within {timeout_s}s"
        await asyncio.sleep(0.05)


def tiny_requests(count: int) -> list[InferenceRequest]:
    """Valid requests for tiny:1 whose results are only stored under their result keys."""
    rng = np.random.default_rng(0)
    return [
        InferenceRequest(
            id=f"r-{i}-{uuid.uuid4().hex[:8]}",
            model=MODEL,
            version="1",
            inputs=(Tensor.from_numpy("x", rng.standard_normal((1, 16)).astype(np.float32)),),
            reply=ReplyAddress(ReplyKind.RESULT, ""),
        )
        for i in range(count)
    ]


async def produce_requests(settings: FleetSettings, names: Names, requests: list[InferenceRequest]) -> None:
    """Produce ``requests`` to tiny's topic the way the gateway does."""
    producer = AIOKafkaProducer(**{**settings.kafka.producer_kwargs(), "linger_ms": 5})
    await producer.start()
    try:
        futures = []
        for request in requests:
            key = request.id.encode()
            headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, b"1")]
            futures.append(
                await producer.send(names.request_topic(MODEL), request.to_bytes(), key=key, headers=headers)
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
