"""Service stats the worker publishes for the autoscaler (record and keys: `schemas.stats`, `schemas.names`).

`ModelStats` measures one served model (pure, fed by the consumer and the handler); `StatsPublisher` looks
at every model's report every heartbeat interval and writes, in one pipelined round trip, those that changed
(a report's time aside; GPU utilization in steps of ``GPU_STEP_PCT``), or were written more than
``STATS_REFRESH_S`` ago; it withdraws the reports of models it stopped serving, and all of them on stop.
So an idle worker writes nothing per model: its models' last reports stay (with a TTL of two refresh
periods), and the autoscaler counts a report as current while it is recent or its worker's heartbeat is
live (`autoscaler.stats`). An idle model's last report says what it was doing last: its windowed figures
(p95, queue) go back to zero as the window drains, and those changes are written too. A model that
never measured anything has no report (the autoscaler reads a missing one as all zeros, as that report).
A model that saw nothing since its last report, whose windows had drained by then, is not even looked at
again (`ModelStats.version`): its report would say the same, so an idle pool worker's beat costs little
whatever its model count.

Per-request service time is the worker's *busy* time per request: the wall time of a round (handle, run the
batches, deliver, commit) divided by the requests it answered, over a recent window. Compute time alone
would leave out the per-round fixed costs (the Redis round trip, the commit), which dominate for small
models and would make 1 / service time a large overestimate of what a worker completes per second. The
last measured value is kept while the worker idles, so an idle worker does not fall back to "unknown".
Requests per record is the same window's answered requests over the Kafka records they came in (a record the
gateway coalesced carries several; a record counts once, with its last request): the autoscaler's lag and
rates count records, its throughput requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.exceptions import RedisError

from common.gpu import mean_utilization
from schemas import Names, now_ms
from schemas.stats import DEFAULT_STATS_TTL_S, WorkerReport, publish_worker_stats, withdraw_service_stats

log = logging.getLogger("fleet.workers")

#: Seconds of history behind the service time, batch size and p95 latency.
STATS_WINDOW_S = 30.0
_MAX_SAMPLES = 4096
#: An unchanged report is written again after this many seconds (its keys live twice as long), so one lost
#: to a Redis restart comes back and a crashed worker's reports are gone within the hour.
STATS_REFRESH_S = 1800.0
#: GPU utilization changes smaller than this many points do not count as a change of a report.
GPU_STEP_PCT = 5.0
#: Fields left out when comparing reports (GPU utilization is compared apart; a cap is not a measurement).
_UNCHANGING = ("ts_ms", "gpu_util", "max_seqs")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` (0..100) percentile of ``values`` by the nearest-rank method; 0 when empty (pure)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class ModelStats:
    """Windowed measurements of one model in one worker (no I/O)."""

    def __init__(self, *, window_s: float = STATS_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        #: Requests answered (reply or dead letter) since the worker started.
        self.completed = 0
        #: Records fetched but not answered yet.
        self.in_hand = 0
        #: Cumulative since the worker started (Triton's model statistics): model executions, requests run
        #: successfully, their summed queue and compute ms, and the epoch ms of the last execution.
        self.executions = 0
        self.succeeded = 0
        self.queue_total_ms = 0.0
        self.compute_total_ms = 0.0
        self.last_inference_ms = 0.0
        #: (at, requests, busy s, records)
        self._rounds: deque[tuple[float, int, float, int]] = deque(maxlen=_MAX_SAMPLES)
        self._batches: deque[tuple[float, int]] = deque(maxlen=_MAX_SAMPLES)  # (at, requests in the batch)
        self._latencies: deque[tuple[float, float]] = deque(maxlen=_MAX_SAMPLES)  # (at, created -> reply ms)
        self._service_s = 0.0
        self._batch = 0.0
        #: Text generation: sequences in flight now, the worker's cap on them (0: not a generation model).
        self.sequences = 0
        self.max_sequences = 0
        self._tokens: deque[tuple[float, int]] = deque(maxlen=_MAX_SAMPLES)  # (at, tokens generated)
        #: Kafka records consumed since the worker started (a batch record counts once), and the last measured
        #: requests per record (0: none measured yet).
        self.records = 0
        self._per_record = 0.0
        #: Observations so far (any kind), and whether every window was empty at the last `report`.
        self._observed = 0
        self._drained = False

    def version(self) -> tuple[int, int, int, int] | None:
        """A cheap mark of what the next `report` would say: while it stays the same, that report says what the last
        one did (its time aside); None while a window still holds samples (the figures change as they age out)."""
        if not self._drained:
            return None
        return (self._observed, self.in_hand, self.sequences, self.max_sequences)

    def observe_batch(self, requests: int, compute_s: float = 0.0, queue_ms: float = 0.0) -> None:
        """One successful model execution of ``requests`` requests that took ``compute_s`` seconds, after the
        requests waited ``queue_ms`` in total."""
        self._batches.append((self._clock(), requests))
        self._observed += 1
        self._drained = False
        self.executions += 1
        self.succeeded += requests
        self.queue_total_ms += max(0.0, queue_ms)
        self.compute_total_ms += max(0.0, compute_s) * 1000.0 * requests
        self.last_inference_ms = now_ms()

    def observe_tokens(self, tokens: int) -> None:
        """A generated sequence ended with ``tokens`` new tokens."""
        if tokens > 0:
            self._tokens.append((self._clock(), tokens))
            self._observed += 1
            self._drained = False

    def observe_round(
        self, requests: int, busy_s: float, latencies_ms: Iterable[float], records: int | None = None
    ) -> None:
        """A finished round: ``requests`` answered in ``busy_s`` seconds, with their end-to-end latencies, from
        ``records`` Kafka records (those whose last request it answered; default: one record per request)."""
        now = self._clock()
        records = requests if records is None else max(0, records)
        self.completed += requests
        self.records += records
        self._observed += 1
        self._drained = False
        if requests > 0:
            self._rounds.append((now, requests, max(0.0, busy_s), records))
        self._latencies.extend((now, max(0.0, ms)) for ms in latencies_ms)

    def report(self, worker_id: str, gpu_utilization: float | None, ts_ms: float) -> WorkerReport:
        """The report to publish now."""
        cutoff = self._clock() - self.window_s
        windows = (self._rounds, self._batches, self._latencies, self._tokens)
        for window in windows:
            while window and window[0][0] < cutoff:
                window.popleft()
        self._drained = not any(windows)
        requests = sum(r[1] for r in self._rounds)
        if requests:
            self._service_s = sum(r[2] for r in self._rounds) / requests
            records = sum(r[3] for r in self._rounds)
            if records:
                self._per_record = requests / records
        if self._batches:
            self._batch = sum(b for _, b in self._batches) / len(self._batches)
        return WorkerReport(
            worker_id=worker_id,
            per_request_service_s=self._service_s,
            mean_batch_size=self._batch,
            completed=self.completed,
            p95_latency_ms=percentile([ms for _, ms in self._latencies], 95),
            gpu_utilization=gpu_utilization,
            queue_depth=self.in_hand,
            ts_ms=ts_ms,
            executions=self.executions,
            succeeded=self.succeeded,
            queue_total_ms=self.queue_total_ms,
            compute_total_ms=self.compute_total_ms,
            last_inference_ms=self.last_inference_ms,
            sequences=self.sequences,
            max_sequences=self.max_sequences,
            tokens_per_s=sum(t for _, t in self._tokens) / self.window_s,
            records=self.records,
            requests_per_record=self._per_record,
        )


def _gpu_utilization(devices: Sequence[str]) -> float | None:
    """Mean utilization of the CUDA devices among ``devices``; None when there are none. Blocking (NVML)."""
    values = [u for u in (mean_utilization(d) for d in devices if d.startswith("cuda")) if u is not None]
    return sum(values) / len(values) if values else None


def _quiet(fields: dict[str, str]) -> bool:
    """Whether a report measured nothing yet (every figure zero)."""
    try:
        return all(float(v) == 0 for k, v in fields.items() if k not in _UNCHANGING)
    except ValueError:
        return False


def _same(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether two reports' fields say the same (their times aside, GPU utilization within ``GPU_STEP_PCT``)."""
    if {k: v for k, v in a.items() if k not in _UNCHANGING} != {k: v for k, v in b.items() if k not in _UNCHANGING}:
        return False
    gpu_a, gpu_b = float(a.get("gpu_util", "-1")), float(b.get("gpu_util", "-1"))
    return (gpu_a < 0) == (gpu_b < 0) and abs(gpu_a - gpu_b) < GPU_STEP_PCT


class StatsPublisher:
    """Publishes each model's `ModelStats` when it changed, looking every ``interval_s`` (failures are logged,
    never fatal)."""

    def __init__(
        self,
        redis: Any,
        names: Names,
        worker_id: str,
        stats: Callable[[], dict[str, ModelStats]],
        devices: Callable[[], Sequence[str]],
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._names = names
        self._worker_id = worker_id
        self._stats = stats
        self._devices = devices
        self.interval_s = interval_s
        self._ttl_s = max(DEFAULT_STATS_TTL_S, math.ceil(5 * interval_s), math.ceil(2 * STATS_REFRESH_S))
        self._clock = clock
        #: Per model, the fields of the report last written and when (clock s).
        self._written: dict[str, tuple[dict[str, str], float]] = {}
        #: Per model, its `ModelStats.version` when its report last matched what is stored (or, never measured,
        #: needed none): while it stays, the model is passed over without making its report.
        self._settled: dict[str, tuple[int, int, int, int]] = {}
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin the periodic routine."""
        if self._task is not None:
            raise RuntimeError("StatsPublisher already started")
        self._task = asyncio.create_task(self._publish_routine(), name=f"stats-{self._worker_id}")

    async def publish_once(self) -> bool:
        """Publish the reports that changed (or are due again) now and withdraw those of models no longer
        served; False (and a warning) when Redis refused (they are all tried again next time)."""
        devices = list(self._devices())
        # NVML calls block; on the CPU there is nothing to ask.
        gpu = await asyncio.to_thread(_gpu_utilization, devices) if any(d.startswith("cuda") for d in devices) else None
        ts, now = now_ms(), self._clock()
        served = self._stats()
        due: dict[str, WorkerReport] = {}
        fields: dict[str, dict[str, str]] = {}
        settled = self._settled
        made: dict[str, tuple[int, int, int, int]] = {}  # the versions of the due reports when they were made
        for model, stats in served.items():
            last = self._written.get(model)
            mark = settled.get(model)
            if mark is not None and mark == stats.version() and self._holds(last, gpu, now):
                continue
            report = stats.report(self._worker_id, gpu, ts)
            version = stats.version()
            fields[model] = report.to_fields()
            if (last is None and _quiet(fields[model])) or (
                last is not None and _same(last[0], fields[model]) and now - last[1] < STATS_REFRESH_S
            ):
                if version is None:
                    settled.pop(model, None)
                else:
                    settled[model] = version
                continue
            settled.pop(model, None)
            due[model] = report
            if version is not None:
                made[model] = version
        gone = [m for m in self._written if m not in served]
        if not settled.keys() <= served.keys():
            self._settled = settled = {m: v for m, v in settled.items() if m in served}
        if not due and not gone:
            return True
        try:
            await publish_worker_stats(self._redis, self._names, due, ttl_s=self._ttl_s)
            await withdraw_service_stats(self._redis, self._names, gone, self._worker_id)
        except RedisError as exc:
            log.warning("service stats not published: %s", exc)
            for model in due:  # unknown what was stored: write them next time, whatever they say then
                self._written[model] = ({}, -math.inf)
            return False
        for model in gone:
            del self._written[model]
        self._written.update((model, (fields[model], now)) for model in due)
        settled.update(made)  # written as they were when made: settled while nothing happens to them
        return True

    @staticmethod
    def _holds(last: tuple[dict[str, str], float] | None, gpu: float | None, now: float) -> bool:
        """Whether the stored report ``last`` (None: none, the model measured nothing) still holds for an unchanged
        model: not due for its refresh, and the GPU utilization within ``GPU_STEP_PCT`` of what it says."""
        if last is None:
            return True
        if now - last[1] >= STATS_REFRESH_S:
            return False
        stored = float(last[0].get("gpu_util", "-1"))
        if gpu is None:
            return stored < 0
        return stored >= 0 and abs(stored - gpu) < GPU_STEP_PCT

    async def stop(self) -> None:
        """End the routine and withdraw this worker's stats (idempotent)."""
        self._closing.set()
        task, self._task = self._task, None
        if task is None:
            return
        await task
        try:
            models = sorted(set(self._stats()) | set(self._written))
            await withdraw_service_stats(self._redis, self._names, models, self._worker_id)
        except RedisError as exc:
            log.warning("service stats not withdrawn (they expire by themselves): %s", exc)

    async def _publish_routine(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval_s)
            if self._closing.is_set():
                return
            try:
                await self.publish_once()
            except Exception:  # a bad round (NVML, a report) must not end the reports
                log.exception("service stats round failed")
