"""Records next to requests in a worker's service stats: a coalesced record counts once, its requests each
(the autoscaler's lag counts records, its throughput requests)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from schemas import InferenceRequest, Names, ReplyAddress, ReplyKind, Tensor
from schemas.codec import pack
from schemas.stats import WorkerReport
from workers import Worker
from workers.stats import ModelStats

from .conftest import make_request, produce
from .test_batch_records import _entries, _produce_batch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_record_over_the_window_and_kept_while_idle() -> None:
    clock = Clock()
    stats = ModelStats(window_s=30.0, clock=clock)
    stats.observe_round(8, 0.04, [], records=2)
    stats.observe_round(4, 0.02, [], records=1)
    report = stats.report("w", None, 0.0)
    assert (report.completed, report.records, report.requests_per_record) == (12, 3, 4.0)
    clock.now += 31.0  # the window drained: the last ratio stays, as the service time does
    assert stats.report("w", None, 0.0).requests_per_record == 4.0
    stats.observe_round(3, 0.01, [])  # one request per record when not told otherwise
    report = stats.report("w", None, 0.0)
    assert (report.records, report.requests_per_record) == (6, 1.0)


@pytest.mark.integration
async def test_a_worker_reports_a_batch_record_once_and_its_members_each(
    worker: Worker, producer: AIOKafkaProducer, redis_client: Any, names: Names
) -> None:
    stream = names.reply_stream("batch-gw")
    reply = ReplyAddress(ReplyKind.STREAM, stream, lists=True)
    x = np.ones((1, 16), np.float32)
    members = [InferenceRequest(f"m{i}", "tiny", "1", (Tensor.from_numpy("x", x),), reply) for i in range(3)]
    value = pack(
        {"v": 1, "kind": "batch", "model": "tiny", "version": "1", "reply": reply.to_wire(), "rl": True,
         "requests": [m.member_wire() for m in members]}  # fmt: skip
    )
    await _produce_batch(producer, names.request_topic("tiny"), value, 3)
    await _entries(redis_client, stream, 3)
    plain = names.reply_stream("plain-gw")
    await produce(producer, names, [make_request(plain, x)])
    await _entries(redis_client, plain, 1)

    key = names.stats_key("tiny", worker.id)
    deadline = time.monotonic() + 10.0
    while True:  # the next beat (0.5 s) writes it
        report = WorkerReport.from_hash(worker.id, await redis_client.hgetall(key))
        if report is not None and report.completed == 4:
            break
        assert time.monotonic() < deadline, report
        await asyncio.sleep(0.1)
    assert (report.records, report.requests_per_record) == (2, 2.0)
