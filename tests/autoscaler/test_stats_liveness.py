"""A worker's last stats report counts while the worker is live, even when it was written long ago (workers
write a report when it changes, so an idle model's is old); a dead worker's old report does not."""

from __future__ import annotations

import time
from typing import Any

from autoscaler.stats import ServiceStatsReader, publish_service_stats
from schemas import Names


async def test_an_idle_live_workers_old_report_counts_and_a_dead_ones_does_not(
    redis_client: Any, names: Names
) -> None:
    now = time.time() * 1000
    old = now - 600_000  # ten minutes ago: the model has been idle since
    await publish_service_stats(redis_client, names, "m", "idle", 0.01, 4.0, 100, at_ms=old)
    await publish_service_stats(redis_client, names, "m", "dead", 0.05, 1.0, 10, queue_depth=7, at_ms=old)
    await publish_service_stats(redis_client, names, "m", "busy", 0.02, 8.0, 50, queue_depth=2, at_ms=now)
    await redis_client.zadd(names.workers_key, {"idle": int(now), "dead": int(old)})  # heartbeats
    reader = ServiceStatsReader(redis_client, names, max_age_s=15.0)
    assert sorted(r.worker_id for r in await reader.reports("m")) == ["busy", "idle"]
    many = await reader.read_many(["m"])
    assert many["m"] == await reader.read("m")
    assert many["m"].replicas_reporting == 2 and many["m"].queue_depth == 2  # not the dead worker's queue
    assert many["m"].per_replica_throughput == (1 / 0.01 + 1 / 0.02) / 2
    assert await redis_client.zscore(names.stats_index_key("m"), "dead") is None  # pruned from the index
    assert await redis_client.zscore(names.stats_index_key("m"), "idle") is not None
