"""Worker service stats: the Redis records workers write and the autoscaler reads (keys in `schemas.names`).

Each worker overwrites one hash per served model, ``names.stats_key(model, worker_id)``, with an EXPIRE (a
dead worker's stats vanish), and refreshes its score in the model's index ZSET ``names.stats_index_key(model)``.
Then it appends one entry to the namespace's change stream ``names.stats_changes_key`` (fields ``worker``
and ``models``, a comma list of the models whose reports it wrote or withdrew; MAXLEN ~``STATS_CHANGES_MAXLEN``),
after the writes, so a reader that sees the entry reads the new reports (the autoscaler reads only these).
Hash fields (all text)::

    service_s   mean per-request service time of the worker's busy rounds (busy seconds / requests), s
    batch       mean batch size (requests per model execution)
    completed   requests answered since the worker started
    p95_ms      p95 end-to-end latency (request created -> reply delivered) over a recent window, ms; 0 = unknown
    gpu_util    GPU utilization in percent; -1 = no GPU
    queue       requests fetched but not answered yet
    ts_ms       epoch ms of the report
    executions  model executions (batches run) since the worker started
    succeeded   requests the model ran successfully since the worker started
    queue_total_ms    sum of those requests' queue times (created -> batch started), ms
    compute_total_ms  sum of those requests' compute times (each request counts its batch's run), ms
    last_ms     epoch ms of the last successful execution; 0 = none yet
    seqs        text generation: sequences in flight (taken from Kafka, not answered yet)
    max_seqs    text generation: the worker's cap on sequences in flight (FLEET_WORKER_MAX_SEQUENCES); 0 = not a
                generation model
    tok_s       text generation: tokens generated per second over a recent window
    records     Kafka records consumed (answered to their last request) since the worker started
    rpr         mean requests per Kafka record over a recent window (above 1 where the gateway coalesces sync
                requests into batch records); 0 = unknown (nothing measured yet, or a worker that predates it)

Readers ignore fields they do not know, so fields can be added without a version bump.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .names import Names

#: Default lifetime of a worker's stats hash (a few report intervals).
DEFAULT_STATS_TTL_S = 30
#: Lifetime of a model's index ZSET (refreshed by every report; stale members are pruned by readers).
_INDEX_TTL_S = 3600
#: Entries the change stream keeps (about): a reader that fell further behind reads every report afresh.
STATS_CHANGES_MAXLEN = 10_000


def _wall_ms() -> float:
    return time.time() * 1000.0


@dataclass(frozen=True)
class WorkerReport:
    """One worker's service stats for one model."""

    worker_id: str
    per_request_service_s: float
    mean_batch_size: float
    completed: int
    p95_latency_ms: float
    gpu_utilization: float | None
    queue_depth: int
    ts_ms: float
    executions: int = 0
    succeeded: int = 0
    queue_total_ms: float = 0.0
    compute_total_ms: float = 0.0
    last_inference_ms: float = 0.0
    sequences: int = 0
    max_sequences: int = 0
    tokens_per_s: float = 0.0
    records: int = 0
    requests_per_record: float = 0.0

    def to_fields(self) -> dict[str, str]:
        """The hash fields (see the module docstring)."""
        return {
            "service_s": repr(float(self.per_request_service_s)),
            "batch": repr(float(self.mean_batch_size)),
            "completed": str(int(self.completed)),
            "p95_ms": repr(float(self.p95_latency_ms)),
            "gpu_util": repr(-1.0 if self.gpu_utilization is None else float(self.gpu_utilization)),
            "queue": str(int(self.queue_depth)),
            "ts_ms": str(int(self.ts_ms)),
            "executions": str(int(self.executions)),
            "succeeded": str(int(self.succeeded)),
            "queue_total_ms": repr(float(self.queue_total_ms)),
            "compute_total_ms": repr(float(self.compute_total_ms)),
            "last_ms": str(int(self.last_inference_ms)),
            "seqs": str(int(self.sequences)),
            "max_seqs": str(int(self.max_sequences)),
            "tok_s": repr(float(self.tokens_per_s)),
            "records": str(int(self.records)),
            "rpr": repr(float(self.requests_per_record)),
        }

    @classmethod
    def from_hash(cls, worker_id: str, raw: Mapping[bytes, bytes]) -> WorkerReport | None:
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
                executions=int(fields.get("executions", "0")),
                succeeded=int(fields.get("succeeded", "0")),
                queue_total_ms=float(fields.get("queue_total_ms", "0")),
                compute_total_ms=float(fields.get("compute_total_ms", "0")),
                last_inference_ms=float(fields.get("last_ms", "0")),
                sequences=int(fields.get("seqs", "0")),
                max_sequences=int(fields.get("max_seqs", "0")),
                tokens_per_s=float(fields.get("tok_s", "0")),
                records=int(fields.get("records", "0")),
                requests_per_record=float(fields.get("rpr", "0")),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return None
        numbers = (
            report.per_request_service_s,
            report.mean_batch_size,
            report.p95_latency_ms,
            report.queue_total_ms,
            report.compute_total_ms,
            report.tokens_per_s,
            report.requests_per_record,
        )
        return report if all(math.isfinite(x) for x in numbers) else None


async def publish_worker_stats(
    redis: Any, names: Names, reports: Mapping[str, WorkerReport], *, ttl_s: int = DEFAULT_STATS_TTL_S
) -> None:
    """Write a worker's reports, ``{model: report}``, in one pipelined round trip. Raises RedisError."""
    if not reports:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for model, report in reports.items():
            key = names.stats_key(model, report.worker_id)
            index = names.stats_index_key(model)
            pipe.hset(key, mapping=report.to_fields())
            pipe.expire(key, ttl_s)
            pipe.zadd(index, {report.worker_id: int(report.ts_ms)})
            pipe.expire(index, max(ttl_s, _INDEX_TTL_S))
        await pipe.execute()
    by_worker: dict[str, list[str]] = {}
    for model, report in reports.items():
        by_worker.setdefault(report.worker_id, []).append(model)
    await _announce(redis, names, by_worker)


async def _announce(redis: Any, names: Names, by_worker: Mapping[str, Sequence[str]]) -> None:
    """One change-stream entry per worker naming its models whose reports changed (sent after the writes: on a
    Redis Cluster a pipeline's commands to different slots are not ordered). Raises RedisError."""
    async with redis.pipeline(transaction=False) as pipe:
        for worker_id, models in by_worker.items():
            fields = {"worker": worker_id, "models": ",".join(models)}
            pipe.xadd(names.stats_changes_key, fields, maxlen=STATS_CHANGES_MAXLEN, approximate=True)
        await pipe.execute()


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
    """Write one worker's stats for one model (one pipelined round trip). Raises RedisError."""
    report = WorkerReport(
        worker_id,
        per_request_service_s,
        mean_batch_size,
        completed,
        p95_latency_ms,
        gpu_utilization,
        queue_depth,
        _wall_ms() if at_ms is None else at_ms,
    )
    await publish_worker_stats(redis, names, {model: report}, ttl_s=ttl_s)


async def withdraw_service_stats(redis: Any, names: Names, models: Sequence[str], worker_id: str) -> None:
    """Remove a stopping worker's stats, so readers stop counting it at once. Raises RedisError."""
    if not models:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for model in models:
            pipe.delete(names.stats_key(model, worker_id))
            pipe.zrem(names.stats_index_key(model), worker_id)
        await pipe.execute()
    await _announce(redis, names, {worker_id: models})
