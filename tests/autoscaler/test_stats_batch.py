"""Stats of many models in one batch, and a round that reads stats only for models that can use them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from autoscaler import Autoscaler, AutoscalerSettings
from autoscaler.signals import ServiceStats
from autoscaler.stats import ServiceStatsReader, publish_service_stats
from schemas import Names

from .test_controller import Clock, FixedLoads, MemoryBackend


async def test_read_many_matches_read(redis_client: Any, names: Names) -> None:
    now = time.time() * 1000
    await publish_service_stats(redis_client, names, "m", "w1", 0.01, 8.0, 100, p95_latency_ms=40.0, at_ms=now)
    await publish_service_stats(redis_client, names, "m", "w2", 0.02, 4.0, 50, queue_depth=2, at_ms=now)
    await publish_service_stats(redis_client, names, "m", "old", 1.0, 1.0, 1, at_ms=now - 60_000)
    await publish_service_stats(redis_client, names, "other", "w3", 0.5, 1.0, 1, at_ms=now)
    reader = ServiceStatsReader(redis_client, names, max_age_s=15.0)
    many = await reader.read_many(["m", "other", "nobody"])
    assert await redis_client.zscore(names.stats_index_key("m"), "old") is None  # pruned as `read` does
    assert many == {"m": await reader.read("m"), "other": await reader.read("other"), "nobody": ServiceStats()}
    assert many["m"].replicas_reporting == 2 and many["m"].queue_depth == 2
    assert await reader.read_many([]) == {}


class CountingStats:
    """Stats that remember which models a round asked for (in one batch)."""

    def __init__(self, reporting: dict[str, ServiceStats]) -> None:
        self.reporting = reporting
        self.batches: list[list[str]] = []

    async def read(self, model: str) -> ServiceStats:
        raise AssertionError("a round reads stats in one batch")

    async def read_many(self, models: Sequence[str]) -> dict[str, ServiceStats]:
        self.batches.append(list(models))
        return {m: self.reporting.get(m, ServiceStats()) for m in models}


async def test_a_round_reads_stats_only_where_they_can_matter() -> None:
    models = ("idle", "backlog", "served", "reported")
    stats = CountingStats({"reported": ServiceStats(replicas_reporting=1, per_replica_throughput=50.0)})
    settings = AutoscalerSettings(models=models, default_replica_throughput=10.0)
    scaler = Autoscaler(
        settings, MemoryBackend(served=1), FixedLoads({"idle": 0, "backlog": 40, "served": 0}), stats, clock=Clock()
    )
    # The first round does not know who reports: it reads the models with workers or work.
    await scaler.step()
    assert stats.batches == [["backlog", "served"]]
    stats.batches.clear()
    stats.reporting["backlog"] = ServiceStats(replicas_reporting=1, per_replica_throughput=50.0)
    await scaler.step()
    # "backlog" scaled up (the memory backend now runs it); an idle model without workers is never read.
    assert stats.batches == [["backlog", "served"]]
    assert scaler.decisions["idle"].desired == 0
    assert scaler.decisions["backlog"].inputs["per_replica_throughput"] == 50.0
