"""Fixtures for worker tests: a registered tiny MLP, an in-process worker, a producer and reply readers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import (
    BatchingConfig,
    FleetSettings,
    InferenceRequest,
    InferenceResponse,
    ModelRecord,
    ModelRegistry,
    Names,
    ReplyAddress,
    ReplyKind,
    Tensor,
)
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings

STREAM_SUFFIX = "test-gw"


@pytest.fixture
async def tiny_model(fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path) -> ModelRecord:
    """The tiny MLP registered as version 1 of ``tiny`` (up to 32 rows per batch, 20 ms window)."""
    record = build_record(
        "tiny",
        "1",
        tiny_mlp(tmp_path / "tiny.onnx"),
        batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=20),
    )
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, "tiny")
    return record


@pytest.fixture
def worker_settings(fleet_settings: FleetSettings, tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(
        models=("tiny",),
        fleet=fleet_settings,
        heartbeat_interval_s=0.5,
        drain_timeout_s=10,
        cache_dir=str(tmp_path / "artifact-cache"),
    )


@pytest.fixture
async def worker(worker_settings: WorkerSettings, tiny_model: ModelRecord) -> AsyncIterator[Worker]:
    async with Worker(worker_settings) as w:
        await w.wait_ready(30)
        yield w


@pytest.fixture
async def producer(fleet_settings: FleetSettings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(**{**fleet_settings.kafka.producer_kwargs(), "linger_ms": 5})
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
def stream(names: Names) -> str:
    return names.reply_stream(STREAM_SUFFIX)


def make_request(stream: str, x: np.ndarray, *, rid: str | None = None, **extra: Any) -> InferenceRequest:
    """A request for tiny:1 replying to ``stream``."""
    return InferenceRequest(
        id=rid or f"r-{time.monotonic_ns()}-{np.random.default_rng().integers(1 << 30)}",
        model=extra.pop("model", "tiny"),
        version=extra.pop("version", "1"),
        inputs=(Tensor.from_numpy("x", x),),
        reply=ReplyAddress(ReplyKind.STREAM, stream),
        **extra,
    )


async def produce(producer: AIOKafkaProducer, names: Names, requests: Iterable[InferenceRequest | bytes]) -> list[Any]:
    """Produce requests (or raw bytes) to tiny's topic the way the gateway does; returns the record metadata."""
    futures = []
    for item in requests:
        if isinstance(item, bytes):
            value, key = item, b"raw"
        else:
            value, key = item.to_bytes(), item.id.encode()
        headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, b"1")]
        futures.append(await producer.send(names.request_topic("tiny"), value, key=key, headers=headers))
    return list(await asyncio.gather(*futures))


async def read_replies(redis: Any, stream: str, count: int, timeout_s: float = 20.0) -> list[InferenceResponse]:
    """At least ``count`` responses from ``stream`` (every entry in the stream), or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    responses: list[InferenceResponse] = []
    last = "0-0"
    while len(responses) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(responses)} of {count} replies after {timeout_s}s"
        result = await redis.xread({stream: last}, count=1000, block=max(1, int(min(remaining, 0.5) * 1000)))
        for _, entries in result or []:
            for entry_id, fields in entries:
                last = entry_id
                responses.append(InferenceResponse.from_bytes(fields[b"r"]))
    return responses
