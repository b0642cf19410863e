"""A pipelined round does what needs no model (registry lookup, validation) while the round before it still runs
on the model, takes the model only once that round has left it, and checks its deadlines again then (real
handler, model and Redis)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from schemas import ErrorCode, InferenceRequest, Lane, ModelRecord, Names, now_ms
from workers import handler
from workers.artifact_cache import ArtifactCache
from workers.handler import Fetched
from workers.metrics import WorkerMetrics
from workers.model_serving import WorkerBackends
from workers.residency_manager import ResidencyManager, worker_capacity
from workers.residency_metrics import ResidencyMetrics
from workers.round import RoundPipeline
from workers.settings import WorkerSettings

from .conftest import make_request, read_replies

pytestmark = pytest.mark.integration


def _round(requests: Sequence[InferenceRequest], first_offset: int) -> list[Fetched]:
    return [
        Fetched(SimpleNamespace(topic="t", partition=0, offset=first_offset + i, key=None, headers=[]), request)
        for i, request in enumerate(requests)
    ]


async def test_the_next_round_is_validated_while_the_round_before_runs_on_the_model(
    worker_settings: WorkerSettings,
    tiny_model: ModelRecord,
    names: Names,
    redis_client: Any,
    producer: AIOKafkaProducer,
    stream: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    validated: list[str] = []
    validate, execute = handler.validate, handler._execute
    on_model, leave = threading.Event(), threading.Event()

    def logged_validate(record: ModelRecord, request: InferenceRequest) -> None:
        validated.append(request.id)
        validate(record, request)

    def held_execute(runtime: Any, requests: Sequence[InferenceRequest], batch: Any) -> Any:
        if requests[0].id.startswith("a-"):  # round a stays on the model thread until the test lets it go
            on_model.set()
            leave.wait(20)
        return execute(runtime, requests, batch)

    monkeypatch.setattr(handler, "validate", logged_validate)
    monkeypatch.setattr(handler, "_execute", held_execute)
    metrics = WorkerMetrics()
    residency = ResidencyManager(
        worker_capacity(0, 0, "cpu"), ResidencyMetrics(metrics.registry), names, "w", interval_s=1.0
    )
    artifacts = ArtifactCache(worker_settings.cache_dir or "")
    backends = WorkerBackends.create(worker_settings, names, redis_client, producer, metrics, residency, artifacts)
    executor = ThreadPoolExecutor(max_workers=1)
    serving = backends.serve("tiny", executor)
    pipeline = RoundPipeline(serving.rounds, 2)
    committed: list[int] = []

    async def commit(fetched: Sequence[Fetched]) -> None:
        committed.append(max(int(f.record.offset) for f in fetched))

    x = np.ones((1, 16), np.float32)
    a = [make_request(stream, x, rid=f"a-{i}") for i in range(2)]
    b = [make_request(stream, x, rid="b-0"), make_request(stream, x, rid="b-1", deadline_ms=now_ms() + 300)]
    try:
        pipeline.submit(_round(a, 0), Lane.INTERACTIVE, "retry", commit)
        pipeline.submit(_round(b, 2), Lane.INTERACTIVE, "retry", commit)
        assert await asyncio.to_thread(on_model.wait, 20)
        for _ in range(100):  # round b is validated meanwhile (it was only once round a had left the model)
            if {"b-0", "b-1"} <= set(validated):
                break
            await asyncio.sleep(0.02)
        assert {"b-0", "b-1"} <= set(validated), validated
        assert pipeline.before_model() == 2  # a on the model, b waiting for it
        await asyncio.sleep(0.4)  # b-1's deadline passes while it waits for the model: not run, answered so
        leave.set()
        await pipeline.drain()
        replies = await read_replies(redis_client, stream, 4)
        errors = {r.id: r.error.code if r.error else None for r in replies}
        assert errors == {"a-0": None, "a-1": None, "b-0": None, "b-1": ErrorCode.DEADLINE_EXCEEDED}
        assert committed == [1, 3]
    finally:
        leave.set()
        await pipeline.cancel()
        await serving.cache.close()
        await asyncio.to_thread(executor.shutdown, wait=True)
