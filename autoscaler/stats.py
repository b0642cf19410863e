"""Worker service stats in Redis: the writer workers call after batches, and the reader the autoscaler uses.

Key layout: see `autoscaler.keys`. Each worker overwrites its own hash (with a TTL, so a dead worker's
stats vanish) and refreshes its score in the model's index ZSET; the reader takes the fresh entries of the
index, reads their hashes in one pipelined round trip and aggregates them into a `ServiceStats`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from schemas import Names

from .errors import StatsError
from .keys import stats_index_key, stats_key
from .signals import ServiceStats

#: Default lifetime of a worker's stats hash (a few report intervals).
DEFAULT_STATS_TTL_S = 30


def _wall_ms() -> float:
    return time.time() * 1000.0


async def publish_service_stats(
    redis: Any,
    names: Names,
    model: str,
    worker_id: str,
    per_request_service_s: float,
    mean_batch_size: float,
    completed: int,
    *,
    p95_latency_ms: float = 0.0,
    gpu_utilization: float | None = None,
    queue_depth: int = 0,
    ttl_s: int = DEFAULT_STATS_TTL_S,
    at_ms: float | None = None,
) -> None:
    """Write one worker's stats for ``model`` (one pipelined round trip). Call it every few seconds."""
    ts = _wall_ms() if at_ms is None else at_ms
    key = stats_key(names, model, worker_id)
    index = stats_index_key(names, model)
    fields = {
        "service_s": repr(float(per_request_service_s)),
        "batch": repr(float(mean_batch_size)),
        "completed": str(int(completed)),
        "p95_ms": repr(float(p95_latency_ms)),
        "gpu_util": repr(-1.0 if gpu_utilization is None else float(gpu_utilization)),
        "queue": str(int(queue_depth)),
        "ts_ms": str(int(ts)),
    }
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, ttl_s)
        pipe.zadd(index, {worker_id: int(ts)})
        pipe.expire(index, max(ttl_s, 3600))
        await pipe.execute()


@dataclass(frozen=True)
class WorkerReport:
    """One worker's parsed stats hash."""

    worker_id: str
    per_request_service_s: float
    mean_batch_size: float
    completed: int
    p95_latency_ms: float
    gpu_utilization: float | None
    queue_depth: int
    ts_ms: float

    @classmethod
    def from_hash(cls, worker_id: str, raw: dict[bytes, bytes]) -> WorkerReport | None:
        """Parse a stats hash; None when it is empty or malformed (it is then ignored)."""
        try:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            gpu = float(fields.get("gpu_util", "-1"))
            report = cls(
                worker_id=worker_id,
                per_request_service_s=float(fields["service_s"]),
                mean_batch_size=float(fields.get("batch", "0")),
                completed=int(fields.get("completed", "0")),
                p95_latency_ms=float(fields.get("p95_ms", "0")),
                gpu_utilization=None if gpu < 0 else gpu,
                queue_depth=int(fields.get("queue", "0")),
                ts_ms=float(fields["ts_ms"]),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return None
        numbers = (report.per_request_service_s, report.mean_batch_size, report.p95_latency_ms)
        return report if all(math.isfinite(x) for x in numbers) else None


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
        index = stats_index_key(self._names, model)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(index, "-inf", f"({int(cutoff)}")
                pipe.zrangebyscore(index, int(cutoff), "+inf")
                _, members = await pipe.execute()
            worker_ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
            if not worker_ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for worker_id in worker_ids:
                    pipe.hgetall(stats_key(self._names, model, worker_id))
                hashes = await pipe.execute()
        except RedisError as exc:
            raise StatsError(f"reading service stats of {model!r} failed: {exc}") from exc
        reports = [WorkerReport.from_hash(w, h) for w, h in zip(worker_ids, hashes, strict=True)]
        return [r for r in reports if r is not None and r.ts_ms >= cutoff]

    async def read(self, model: str) -> ServiceStats:
        """Aggregated `ServiceStats` of ``model`` (all zero when no worker reports)."""
        return aggregate_service_stats(await self.reports(model))
