"""Service stats: the pure window arithmetic, and a worker publishing them for the autoscaler's reader."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from autoscaler import ServiceStatsReader
from schemas import Names
from workers import Worker
from workers.stats import ModelStats, percentile

from .conftest import make_request, produce, read_replies


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 95, 0.0), ([5.0], 95, 5.0), (list(map(float, range(1, 101))), 95, 95.0), ([3.0, 1.0, 2.0], 50, 2.0)],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_model_stats_window_and_sticky_service_time() -> None:
    clock = Clock()
    stats = ModelStats(window_s=10.0, clock=clock)
    assert stats.report("w", None, 1.0).per_request_service_s == 0.0  # nothing measured yet
    stats.observe_batch(4)
    stats.observe_batch(2)
    stats.observe_round(6, 0.03, [10.0] * 5 + [50.0])
    stats.in_hand = 3
    report = stats.report("w", 40.0, 123.0)
    assert report.per_request_service_s == pytest.approx(0.005)
    assert report.mean_batch_size == 3.0 and report.completed == 6 and report.queue_depth == 3
    assert report.p95_latency_ms == 50.0 and report.gpu_utilization == 40.0 and report.ts_ms == 123.0
    clock.now += 11.0  # the window has passed: the last service time stays, the latency is unknown again
    idle = stats.report("w", None, 124.0)
    assert idle.per_request_service_s == pytest.approx(0.005) and idle.mean_batch_size == 3.0
    assert idle.p95_latency_ms == 0.0 and idle.completed == 6


@pytest.mark.integration
async def test_worker_publishes_stats_the_autoscaler_reads(
    worker: Worker, producer: AIOKafkaProducer, names: Names, redis_client: Any, stream: str
) -> None:
    rng = np.random.default_rng(5)
    requests = [make_request(stream, rng.standard_normal((1, 16)).astype(np.float32)) for _ in range(64)]
    await produce(producer, names, requests)
    await read_replies(redis_client, stream, len(requests))
    reader = ServiceStatsReader(redis_client, names, max_age_s=15.0)
    deadline = time.monotonic() + 15
    while True:
        reports = await reader.reports("tiny")
        if reports and reports[0].completed >= len(requests):
            break
        assert time.monotonic() < deadline, f"no complete stats report: {reports}"
        await asyncio.sleep(0.05)
    (report,) = reports
    assert report.worker_id == worker.id and report.gpu_utilization is None
    assert 0 < report.per_request_service_s < 1.0  # a tiny MLP: well under a second per request
    assert report.mean_batch_size >= 1.0 and report.p95_latency_ms > 0 and report.queue_depth == 0
    stats = await reader.read("tiny")
    assert stats.replicas_reporting == 1 and stats.per_replica_throughput > 0
    await worker.stop()  # a stopped worker withdraws its stats at once
    assert await reader.reports("tiny") == []
