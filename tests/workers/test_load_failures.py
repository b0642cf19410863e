"""Workers record a failed load (reason, time, worker) for the gateway's model readiness, and clear it on a load."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from schemas import ErrorCode, ModelRecord, ModelRegistry, Names, now_ms
from schemas.load_failures import LoadFailure, LoadFailures
from workers import Worker

from .conftest import make_request, produce, read_replies


async def test_a_failed_load_is_recorded_and_a_successful_one_clears_it(
    worker: Worker, tiny_model: ModelRecord, producer: Any, names: Names, redis_client: Any, stream: str
) -> None:
    registry = ModelRegistry(redis_client, names)
    await registry.register(dataclasses.replace(tiny_model, version="2", sha256="0" * 64))  # artifact does not match
    await registry.register(dataclasses.replace(tiny_model, version="3"))
    # An older failure of version 3 (another worker, say) that the coming load proves wrong.
    await LoadFailures(redis_client, names, "elsewhere").record("tiny", "3", "out of memory", now_ms())
    broken = make_request(stream, np.ones((1, 16), np.float32), rid="broken", version="2")
    fine = make_request(stream, np.ones((1, 16), np.float32), rid="fine", version="3")
    await produce(producer, names, [broken, fine])
    replies = {r.id: r for r in await read_replies(redis_client, stream, 2)}
    assert replies["broken"].error is not None and replies["broken"].error.code is ErrorCode.MODEL_LOAD_FAILED
    assert replies["fine"].error is None
    raw = await redis_client.get(names.load_failure_key("tiny", "2"))
    assert raw is not None, "the failed load was not recorded"
    failure = LoadFailure.from_bytes(raw)
    assert failure.worker == worker.id and failure.reason == replies["broken"].error.message
    assert 0 < await redis_client.ttl(names.load_failure_key("tiny", "2")) <= 60
    assert await redis_client.exists(names.load_failure_key("tiny", "3")) == 0
