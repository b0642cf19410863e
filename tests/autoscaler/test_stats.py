"""Worker service stats and pins in a real Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest

from autoscaler import (
    PinStore,
    ServiceStatsReader,
    WorkerReport,
    aggregate_service_stats,
    publish_service_stats,
    stats_key,
)
from schemas import Names


def report(service_s: float, p95: float = 0.0, gpu: float | None = None, queue: int = 0) -> WorkerReport:
    return WorkerReport("w", service_s, 4.0, 10, p95, gpu, queue, 0.0)


@pytest.mark.parametrize(
    "reports,throughput,p95,gpu,queue",
    [
        ([], 0.0, 0.0, None, 0),
        ([report(0.01)], 100.0, 0.0, None, 0),
        ([report(0.01, p95=50), report(0.02, p95=80)], 75.0, 80.0, None, 0),
        ([report(0.0), report(0.05)], 20.0, 0.0, None, 0),  # unmeasured worker ignored
        ([report(0.01, gpu=40.0, queue=3), report(0.01, gpu=80.0, queue=4)], 100.0, 0.0, 60.0, 7),
    ],
)
def test_aggregate(reports: list[WorkerReport], throughput: float, p95: float, gpu: float | None, queue: int) -> None:
    stats = aggregate_service_stats(reports)
    assert stats.replicas_reporting == len(reports)
    assert stats.per_replica_throughput == pytest.approx(throughput)
    assert stats.p95_latency_ms == p95 and stats.gpu_utilization == gpu and stats.queue_depth == queue


async def test_publish_and_read(redis_client: Any, names: Names) -> None:
    now = time.time() * 1000
    await publish_service_stats(redis_client, names, "m", "w1", 0.01, 8.0, 100, p95_latency_ms=40.0, at_ms=now)
    await publish_service_stats(
        redis_client, names, "m", "w2", 0.02, 4.0, 50, gpu_utilization=70.0, queue_depth=2, at_ms=now
    )
    await publish_service_stats(redis_client, names, "m", "old", 1.0, 1.0, 1, at_ms=now - 60_000)
    await publish_service_stats(redis_client, names, "other", "w3", 0.5, 1.0, 1, at_ms=now)
    await redis_client.hset(stats_key(names, "m", "broken"), mapping={"service_s": "nan?", "ts_ms": str(int(now))})
    await redis_client.zadd(names.stats_index_key("m"), {"broken": int(now)})

    reader = ServiceStatsReader(redis_client, names, max_age_s=15.0)
    reports = await reader.reports("m")
    assert sorted(r.worker_id for r in reports) == ["w1", "w2"]
    stats = await reader.read("m")
    assert stats.replicas_reporting == 2
    assert stats.per_replica_throughput == pytest.approx(75.0)
    assert stats.p95_latency_ms == 40.0 and stats.gpu_utilization == 70.0 and stats.queue_depth == 2
    # the stale worker was pruned from the index
    assert await redis_client.zscore(names.stats_index_key("m"), "old") is None
    assert (await reader.read("nobody")).replicas_reporting == 0


async def test_pins(redis_client: Any, names: Names) -> None:
    store = PinStore(redis_client, names)
    assert await store.pins() == {}
    await store.pin("a", 3)
    await store.pin("b", 0)
    assert await store.pins() == {"a": 3, "b": 0}
    await store.unpin("a")
    assert await store.pins() == {"b": 0}
    with pytest.raises(ValueError):
        await store.pin("a", -1)
