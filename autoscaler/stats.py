"""Worker service stats in Redis, the autoscaler's side: read the fresh reports of a model and aggregate them.

The record and its writer are the shared contract in `schemas.stats` (re-exported here for existing
callers). Each worker overwrites its own hash (with a TTL, so a dead worker's stats vanish) and refreshes its
score in the model's index ZSET when its report changed (`workers.stats`): an idle model's last report is not
written again. So a report is current when it is recent (within ``max_age_s``) or when its worker is live
(its heartbeat in ``Names.workers_key`` is that recent): a crashed worker's reports stop counting as they did
when every report was rewritten each beat. The reader lists the live workers and the model's index, reads
the current entries' hashes in one pipelined round trip (pruning the others from the index) and aggregates
them into a `ServiceStats`.
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
        """The parsed current reports of the workers of ``model`` (recent, or from a live worker)."""
        return (await self._read([model]))[model]

    async def read(self, model: str) -> ServiceStats:
        """Aggregated `ServiceStats` of ``model`` (all zero when no worker reports)."""
        return aggregate_service_stats(await self.reports(model))

    async def read_many(self, models: Sequence[str]) -> dict[str, ServiceStats]:
        """`read` of several models in two pipelined round trips (one to list the live workers and each
        model's reporters, one for the current ones' hashes and to prune the others); raises StatsError."""
        if not models:
            return {}
        return {model: aggregate_service_stats(found) for model, found in (await self._read(models)).items()}

    async def _read(self, models: Sequence[str]) -> dict[str, list[WorkerReport]]:
        cutoff = int(self._clock_ms() - self.max_age_s * 1000.0)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(self._names.workers_key, cutoff, "+inf")
                for model in models:
                    pipe.zrange(self._names.stats_index_key(model), 0, -1, withscores=True)
                live_raw, *listed = await pipe.execute()
            live = {text(w) for w in live_raw}
            wanted: list[tuple[str, str]] = []
            stale: dict[str, list[str]] = {}
            for model, members in zip(models, listed, strict=True):
                for member, score in members:
                    worker_id = text(member)
                    if score >= cutoff or worker_id in live:
                        wanted.append((model, worker_id))
                    else:
                        stale.setdefault(model, []).append(worker_id)
            hashes: list[Any] = []
            if wanted or stale:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for model, worker_id in wanted:
                        pipe.hgetall(self._names.stats_key(model, worker_id))
                    for model, workers in stale.items():
                        pipe.zrem(self._names.stats_index_key(model), *workers)
                    hashes = (await pipe.execute())[: len(wanted)]
        except RedisError as exc:
            what = repr(models[0]) if len(models) == 1 else f"{len(models)} models"
            raise StatsError(f"reading service stats of {what} failed: {exc}") from exc
        reports: dict[str, list[WorkerReport]] = {model: [] for model in models}
        for (model, worker_id), raw in zip(wanted, hashes, strict=True):
            report = WorkerReport.from_hash(worker_id, raw)
            if report is not None and (report.ts_ms >= cutoff or worker_id in live):
                reports[model].append(report)
        return reports
