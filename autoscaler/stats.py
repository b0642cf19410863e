"""Worker service stats in Redis, the autoscaler's side: read the current reports of models and aggregate them.

The record and its writer are the shared contract in `schemas.stats` (re-exported here for existing
callers). Each worker overwrites its own hash (with a TTL, so a dead worker's stats vanish), refreshes its
score in the model's index ZSET and appends an entry to the namespace's change stream when its report changed
(`workers.stats`): an idle model's last report is not written again. So a report is current when it is recent
(within ``max_age_s``) or when its worker is live (its heartbeat in ``Names.workers_key`` is that recent): a
crashed worker's reports stop counting as they did when every report was rewritten each beat. The reader keeps
the reports it read and, each read, lists the live workers and takes in the change stream since its last read
(two commands in one round trip), reading again only the reports that changed: an idle fleet's stats cost the
same whatever its model count. Reports no longer current are forgotten and pruned from their index. A model's
aggregate is kept too, and made again only when its reports changed, the live workers changed or one of its
reports (of a worker no longer live) ages out.
"""

from __future__ import annotations

import logging
import math
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

log = logging.getLogger("fleet.autoscaler")

#: Change-stream entries read per XRANGE (more are read in further calls of the same round).
_CHANGES_BATCH = 1000


def _wall_ms() -> float:
    return time.time() * 1000.0


def aggregate_service_stats(reports: Sequence[WorkerReport]) -> ServiceStats:
    """Per-replica figures of a model from its workers' reports (pure).

    Throughput of one replica is 1 / per-request service time, averaged over workers that measured one;
    p95 latency is the worst worker's (the SLO is about the slowest path); GPU utilization is the mean
    over workers that have a GPU; queue depth is the sum; requests per record is the mean over workers that
    measured it.
    """
    rates = [1.0 / r.per_request_service_s for r in reports if r.per_request_service_s > 0]
    batches = [r.mean_batch_size for r in reports if r.mean_batch_size > 0]
    gpus = [r.gpu_utilization for r in reports if r.gpu_utilization is not None]
    per_record = [r.requests_per_record for r in reports if r.requests_per_record > 0]
    return ServiceStats(
        replicas_reporting=len(reports),
        per_replica_throughput=sum(rates) / len(rates) if rates else 0.0,
        mean_batch_size=sum(batches) / len(batches) if batches else 0.0,
        p95_latency_ms=max((r.p95_latency_ms for r in reports), default=0.0),
        gpu_utilization=sum(gpus) / len(gpus) if gpus else None,
        queue_depth=sum(max(0, r.queue_depth) for r in reports),
        sequences=sum(max(0, r.sequences) for r in reports),
        max_sequences=sum(max(0, r.max_sequences) for r in reports),
        tokens_per_s=sum(max(0.0, r.tokens_per_s) for r in reports),
        requests_per_record=sum(per_record) / len(per_record) if per_record else 0.0,
    )


class ServiceStatsReader:
    """Reads and aggregates the current stats of a model's workers, reading again only the reports that changed.

    It keeps the reports it read and follows ``Names.stats_changes_key`` (each entry names a worker and the
    models whose reports it wrote or withdrew): a read costs the live-worker list and one XRANGE of the changes
    since the last read, plus one HGETALL per changed report and, for a model read for the first time, its
    index and reports. When the stream lost entries it had not read (trimmed, or Redis restarted) it forgets
    every report and reads each model afresh when it is asked for again.
    """

    def __init__(
        self, redis: Any, names: Names, *, max_age_s: float = 15.0, clock_ms: Callable[[], float] = _wall_ms
    ) -> None:
        self._redis = redis
        self._names = names
        self.max_age_s = max_age_s
        self._clock_ms = clock_ms
        #: The id of the last change-stream entry taken in ("0-0": the stream was empty); None: not in step.
        self._cursor: str | None = None
        #: Per model read so far: worker id -> its last report (only models in here follow the changes).
        self._known: dict[str, dict[str, WorkerReport]] = {}
        #: Per model: its aggregate and the cutoff (epoch ms) from which it no longer holds (a report of a worker
        #: not live ages out); valid while its reports and the live workers (``_live``) stay.
        self._aggregates: dict[str, tuple[ServiceStats, float]] = {}
        self._live: set[str] = set()

    async def reports(self, model: str) -> list[WorkerReport]:
        """The parsed current reports of the workers of ``model`` (recent, or from a live worker)."""
        return (await self._read([model]))[model]

    async def read(self, model: str) -> ServiceStats:
        """Aggregated `ServiceStats` of ``model`` (all zero when no worker reports)."""
        return aggregate_service_stats(await self.reports(model))

    async def read_many(self, models: Sequence[str]) -> dict[str, ServiceStats]:
        """`read` of several models: one round trip for the live workers and the changes, one more for the
        changed reports and the models not read before (and one to list those models' reporters, when there
        are such models); raises StatsError."""
        if not models:
            return {}
        stats: dict[str, ServiceStats] = {}
        await self._read(models, stats)
        return stats

    async def _read(
        self, models: Sequence[str], aggregates: dict[str, ServiceStats] | None = None
    ) -> dict[str, list[WorkerReport]]:
        """The current reports of ``models``; with ``aggregates``, their aggregates go there instead (a kept one
        where it still holds, and no reports are returned for those)."""
        cutoff = int(self._clock_ms() - self.max_age_s * 1000.0)
        try:
            live = await self._take_changes(cutoff)
            if live != self._live:
                self._live, self._aggregates = live, {}
            await self._load([m for m in dict.fromkeys(models) if m not in self._known])
            stale: dict[str, list[str]] = {}
            reports: dict[str, list[WorkerReport]] = {}
            for model in models:
                if aggregates is not None:
                    kept = self._aggregates.get(model)
                    if kept is not None and cutoff <= kept[1]:
                        aggregates[model] = kept[0]
                        continue
                known = self._known[model]
                reports[model] = [r for r in known.values() if r.ts_ms >= cutoff or r.worker_id in live]
                gone = [w for w, r in known.items() if not (r.ts_ms >= cutoff or w in live)]
                if gone:
                    stale[model] = gone
                    for worker_id in gone:
                        del known[worker_id]
                if aggregates is not None:
                    aggregates[model] = aggregate_service_stats(reports[model])
                    ages_out = min((r.ts_ms for r in reports[model] if r.worker_id not in live), default=math.inf)
                    self._aggregates[model] = (aggregates[model], ages_out)
            if stale:  # a dead worker's old reports: out of the index, as they no longer count
                async with self._redis.pipeline(transaction=False) as pipe:
                    for model, workers in stale.items():
                        pipe.zrem(self._names.stats_index_key(model), *workers)
                    await pipe.execute()
        except RedisError as exc:
            # Unknown what was missed: read everything again.
            self._cursor, self._known, self._aggregates = None, {}, {}
            what = repr(models[0]) if len(models) == 1 else f"{len(models)} models"
            raise StatsError(f"reading service stats of {what} failed: {exc}") from exc
        return reports

    async def _take_changes(self, cutoff: int) -> set[str]:
        """The live workers; reads again the known reports that changed since the last call."""
        changes = self._names.stats_changes_key
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self._names.workers_key, cutoff, "+inf")
            if self._cursor is None:
                pipe.xrevrange(changes, "+", "-", count=1)
            else:
                pipe.xrange(changes, "-" if self._cursor == "0-0" else self._cursor, "+", count=_CHANGES_BATCH)
            live_raw, entries = await pipe.execute()
        live = {text(w) for w in live_raw}
        if self._cursor is None:  # from now on, changes are taken in; what is known so far is read afresh
            self._cursor, self._known, self._aggregates = (text(entries[0][0]) if entries else "0-0"), {}, {}
            return live
        changed: set[tuple[str, str]] = set()
        while True:
            if self._cursor != "0-0":
                if not entries or text(entries[0][0]) != self._cursor:
                    # The last entry taken in is gone (trimmed with others after it, or Redis lost the stream).
                    log.info("service stats: the change stream has a gap; reading every model's reports afresh")
                    self._cursor, self._known = (text(entries[-1][0]) if entries else "0-0"), {}
                    self._aggregates = {}
                    return live
                entries = entries[1:]
            for _, fields in entries:
                decoded = {text(k): text(v) for k, v in fields.items()}
                worker_id = decoded.get("worker", "")
                for model in decoded.get("models", "").split(","):
                    if model in self._known and worker_id:
                        changed.add((model, worker_id))
            if not entries:
                break
            self._cursor = text(entries[-1][0])
            if len(entries) < _CHANGES_BATCH - 1:
                break
            entries = await self._redis.xrange(changes, self._cursor, "+", count=_CHANGES_BATCH)
        if changed:
            pairs = sorted(changed)
            async with self._redis.pipeline(transaction=False) as pipe:
                for model, worker_id in pairs:
                    pipe.hgetall(self._names.stats_key(model, worker_id))
                hashes = await pipe.execute()
            for (model, worker_id), raw in zip(pairs, hashes, strict=True):
                self._aggregates.pop(model, None)
                report = WorkerReport.from_hash(worker_id, raw)
                if report is None:  # withdrawn (or unreadable): it no longer counts
                    self._known[model].pop(worker_id, None)
                else:
                    self._known[model][worker_id] = report
        return live

    async def _load(self, models: Sequence[str]) -> None:
        """Read every report of ``models`` (not read before): their indexes, then the reports."""
        if not models:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.zrange(self._names.stats_index_key(model), 0, -1)
            listed = await pipe.execute()
        wanted = [(model, text(member)) for model, members in zip(models, listed, strict=True) for member in members]
        hashes: list[Any] = []
        if wanted:
            async with self._redis.pipeline(transaction=False) as pipe:
                for model, worker_id in wanted:
                    pipe.hgetall(self._names.stats_key(model, worker_id))
                hashes = await pipe.execute()
        for model in models:
            self._known[model] = {}
            self._aggregates.pop(model, None)
        for (model, worker_id), raw in zip(wanted, hashes, strict=True):
            report = WorkerReport.from_hash(worker_id, raw)
            if report is not None:
                self._known[model][worker_id] = report
