"""Worker service stats in Redis, the autoscaler's side: read the fresh reports of a model and aggregate them.

The record and its writer are the shared contract in `schemas.stats` (re-exported here for existing
callers). Each worker overwrites its own hash (with a TTL, so a dead worker's stats vanish) and refreshes its
score in the model's index ZSET; the reader takes the fresh entries of the index, reads their hashes in one
pipelined round trip and aggregates them into a `ServiceStats`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from common import text
from schemas import Names
from schemas.stats import DEFAULT_STATS_TTL_S, WorkerReport, publish_service_stats, publish_worker_stats

from .errors import StatsError
from .signals import ServiceStats

__all__ = [
    "DEFAULT_STATS_TTL_S",
    "ServiceStatsReader",
    "WorkerReport",
    "aggregate_service_stats",
    "publish_service_stats",
    "publish_worker_stats",
]


def _wall_ms() -> float:
    return time.time() * 1000.0


def aggregate_service_stats(reports: Sequence[WorkerReport]) -> ServiceStats:
    """Per-replica figures of a model from its workers' reports (pure).

    Throughput of one replica is 1 / per-request service time, averaged over workers that measured one;
    p95 latency is the worst worker's (the SLO is about the slowest path); GPU utilization is the mean
    over workers that have a GPU; queue depth is the sum.
    """
    rates = [1.0 / r.per_request_service_s for r in reports if r.per_request_service_s > 0]
    batches = [r.mean_batch_size for r in reports if r.mean_batch_size > 0]
    gpus = [r.gpu_utilization for r in reports if r.gpu_utilization is not None]
    return ServiceStats(
        replicas_reporting=len(reports),
        per_replica_throughput=sum(rates) / len(rates) if rates else 0.0,
        mean_batch_size=sum(batches) / len(batches) if batches else 0.0,
        p95_latency_ms=max((r.p95_latency_ms for r in reports), default=0.0),
        gpu_utilization=sum(gpus) / len(gpus) if gpus else None,
        queue_depth=sum(max(0, r.queue_depth) for r in reports),
    )


class ServiceStatsReader:
    """Reads and aggregates the fresh stats of a model's workers."""

    def __init__(
        self, redis: Any, names: Names, *, max_age_s: float = 15.0, clock_ms: Callable[[], float] = _wall_ms
    ) -> None:
        self._redis = redis
        self._names = names
        self.max_age_s = max_age_s
        self._clock_ms = clock_ms

    async def reports(self, model: str) -> list[WorkerReport]:
        """The parsed reports of the workers of ``model`` that published within ``max_age_s``."""
        cutoff = self._clock_ms() - self.max_age_s * 1000.0
        index = self._names.stats_index_key(model)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(index, "-inf", f"({int(cutoff)}")
                pipe.zrangebyscore(index, int(cutoff), "+inf")
                _, members = await pipe.execute()
            worker_ids = [text(m) for m in members]
            if not worker_ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for worker_id in worker_ids:
                    pipe.hgetall(self._names.stats_key(model, worker_id))
                hashes = await pipe.execute()
        except RedisError as exc:
            raise StatsError(f"reading service stats of {model!r} failed: {exc}") from exc
        reports = [WorkerReport.from_hash(w, h) for w, h in zip(worker_ids, hashes, strict=True)]
        return [r for r in reports if r is not None and r.ts_ms >= cutoff]

    async def read(self, model: str) -> ServiceStats:
        """Aggregated `ServiceStats` of ``model`` (all zero when no worker reports)."""
        return aggregate_service_stats(await self.reports(model))

    async def read_many(self, models: Sequence[str]) -> dict[str, ServiceStats]:
        """`read` of several models in two pipelined round trips (one to trim and list each model's fresh
        reporters, one for their hashes); raises StatsError."""
        if not models:
            return {}
        cutoff = self._clock_ms() - self.max_age_s * 1000.0
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for model in models:
                    index = self._names.stats_index_key(model)
                    pipe.zremrangebyscore(index, "-inf", f"({int(cutoff)}")
                    pipe.zrangebyscore(index, int(cutoff), "+inf")
                listed = await pipe.execute()
            wanted = [
                (model, text(m))
                for model, members in zip(models, listed[1::2], strict=True)
                for m in members
            ]
            hashes: list[Any] = []
            if wanted:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for model, worker_id in wanted:
                        pipe.hgetall(self._names.stats_key(model, worker_id))
                    hashes = await pipe.execute()
        except RedisError as exc:
            raise StatsError(f"reading service stats of {len(models)} models failed: {exc}") from exc
        reports: dict[str, list[WorkerReport]] = {model: [] for model in models}
        for (model, worker_id), raw in zip(wanted, hashes, strict=True):
            report = WorkerReport.from_hash(worker_id, raw)
            if report is not None and report.ts_ms >= cutoff:
                reports[model].append(report)
        return {model: aggregate_service_stats(found) for model, found in reports.items()}
