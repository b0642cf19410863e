"""A poison request fails alone: the rest of its batch still gets answers (in-process worker, real broker/Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from fleet.models.artifacts import build_record
from schemas import (
    BatchingConfig,
    ErrorCode,
    FleetSettings,
    InferenceRequest,
    ModelRegistry,
    Names,
    ReplyAddress,
    ReplyKind,
    Tensor,
    TensorSpec,
)
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings

from .conftest import read_replies

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("poisoned", [(5,), (0, 7)])
async def test_only_the_poison_requests_of_a_batch_get_the_model_error(
    fleet_settings: FleetSettings,
    worker_settings: WorkerSettings,
    names: Names,
    redis_client: Any,
    producer: AIOKafkaProducer,
    stream: str,
    tmp_path: Path,
    poisoned: tuple[int, ...],
) -> None:
    torch = pytest.importorskip("torch")
    from tests.workers.torchmodels import poison

    path = tmp_path / "poison.pt"
    torch.save(poison().state_dict(), str(path))
    record = build_record(
        "poison",
        "1",
        path,
        factory="tests.workers.torchmodels:poison",
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP32", (-1, 3)),),
        batching=BatchingConfig(max_batch_size=8, max_queue_delay_ms=200),
    )
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, "poison")
    reply = ReplyAddress(ReplyKind.STREAM, stream)
    requests = []
    for i in range(8):
        x = np.full((1, 4), -1.0 if i in poisoned else float(i), np.float32)
        requests.append(InferenceRequest(f"r{i}", "poison", "1", (Tensor.from_numpy("x", x),), reply=reply))
    async with Worker(dataclasses.replace(worker_settings, models=("poison",))) as worker:
        await worker.wait_ready(30)
        futures = []
        for request in requests:  # one partition, one produce batch: one round, one batch of 8
            headers = [(HEADER_REQUEST_ID, request.id.encode()), (HEADER_ENVELOPE_VERSION, b"1")]
            futures.append(
                await producer.send(names.request_topic("poison"), request.to_bytes(), key=b"k", headers=headers)
            )
        await producer.flush()
        await asyncio.gather(*futures)
        replies = {r.id: r for r in await read_replies(redis_client, stream, len(requests))}
    assert sorted(replies) == [r.id for r in requests]
    for i, request in enumerate(requests):
        response = replies[request.id]
        if i in poisoned:
            assert response.error is not None and response.error.code is ErrorCode.MODEL_ERROR
            assert "negative" in response.error.message
        else:
            assert response.error is None, response.error
            assert response.outputs[0].shape == (1, 3)
