"""Would a request for a model version be served? The view behind model readiness and the sync fail-fast.

One verdict per (model, version), from what the fleet announces in Redis (keys in `schemas.names`):

- **served**: a live worker (heartbeat hash present, state starting or ready) holds the version resident
  (``residency``) or announces the model (``models`` of its heartbeat: it loads versions on demand), and the
  version has no recorded load failure (``load_failed``, written by workers: `schemas.load_failures`) unless
  some worker holds it resident;
- **starting**: no worker yet, but an autoscaler is alive (the leader lease is held, or an autoscaler
  reported its GPU inventory lately: one without leader election) and the model is not capped at 0, so a
  request waits for the worker it starts (scale from zero); also while no autoscaler runs when workers are
  started by something outside the fleet (``external_scaler``: KEDA, an HPA, a process supervisor), or when
  this gateway saw a worker serve the model within ``return_grace_s`` (a worker restarting, a rollout);
- **unavailable**, with the reason: the version failed to load (MODEL_LOAD_FAILED), or the model is pinned
  or capped to 0 workers, cannot be placed, or has no worker and no autoscaler (MODEL_UNAVAILABLE).

Reads are a few pipelined calls (the workers and the autoscaler's keys for the whole fleet, then one call per
version asked), cached for ``ttl_s``. A negative verdict is never served from the cache: it is re-read unless
a read started after the caller asked, so a worker that has just started is never refused. Concurrent
callers share one read.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from redis.exceptions import RedisError

from common import text
from schemas import ErrorCode, ModelRecord, Names, SchemaError, now_ms
from schemas.constants import CAP_BATCH, HEARTBEAT_CAPS
from schemas.limits import ModelLimits
from schemas.load_failures import LoadFailure
from schemas.residency import WorkerResidency

from .errors import BackendDownError, GatewayError

#: Heartbeat states of a worker that serves (or is about to serve) what it announces.
LIVE_STATES = frozenset({"starting", "ready"})
#: Workers whose last heartbeat is older than this are not even looked at (their hash has expired long ago).
_WORKER_WINDOW_MS = 300_000
#: An autoscaler's GPU inventory report younger than this shows that it runs (its TTL: `autoscaler.inventory`).
_AUTOSCALER_REPORT_MS = 30_000
#: Placement state of a model the scheduler could not place anywhere (`autoscaler.placement`).
_SCHEDULE_FAILED = "schedule_failed"


class Serviceability(StrEnum):
    """Whether a request for a model version would be served now."""

    SERVED = "served"
    STARTING = "starting"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A serviceability answer: the state, and why (empty when served)."""

    state: Serviceability
    reason: str = ""
    code: ErrorCode | None = None  # what a refused request answers (UNAVAILABLE only)

    @property
    def ready(self) -> bool:
        """Model readiness: true only when a worker serves it now."""
        return self.state is Serviceability.SERVED


class ModelUnavailableError(GatewayError):
    """A sync request for a model version nothing can serve (503 at once, instead of a 504 after the timeout)."""

    code = ErrorCode.MODEL_UNAVAILABLE
    retriable = True

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason, code=verdict.code or ErrorCode.MODEL_UNAVAILABLE)


@dataclass(frozen=True)
class FleetSnapshot:
    """What the whole fleet announces: models of live workers, resident versions, the autoscaler, pins."""

    announced: frozenset[str] = frozenset()
    resident: frozenset[tuple[str, str]] = frozenset()
    autoscaler_alive: bool = False
    pins: dict[str, int] = field(default_factory=dict)
    #: Models that every worker serving them reads batch records for (heartbeat ``caps``), at least one.
    batch_models: frozenset[str] = frozenset()


@dataclass(frozen=True)
class VersionFacts:
    """What Redis holds about one model version: its load failure, the autoscaler's pin and placement."""

    failure: LoadFailure | None = None
    pinned_to_zero: bool = False  # the autoscaler's last decision was a pin to 0 (a static pin)
    placement_failed: str | None = None  # the placement scheduler's reason when it placed no replica


_SERVED = Verdict(Serviceability.SERVED)


def judge(
    record: ModelRecord, fleet: FleetSnapshot, facts: VersionFacts, *, awaited: str | None = None
) -> Verdict:
    """The verdict for ``record``'s model version (pure: see the module docstring for the rules).

    ``awaited``: why a worker is expected although no autoscaler runs (scaled outside the fleet, or one served
    the model a moment ago), or None.
    """
    model, version = record.name, record.version
    if (model, version) in fleet.resident:
        return _SERVED
    if facts.failure is not None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(facts.failure.ts_ms / 1000.0))
        where = f" on worker {facts.failure.worker}" if facts.failure.worker else ""
        reason = f"model {model!r} version {version!r} failed to load{where} at {when}: {facts.failure.reason}"
        return Verdict(Serviceability.UNAVAILABLE, reason, ErrorCode.MODEL_LOAD_FAILED)
    if model in fleet.announced:
        return Verdict(Serviceability.SERVED)
    if fleet.pins.get(model) == 0 or facts.pinned_to_zero:
        reason = f"model {model!r} is pinned to 0 workers (unpin it or pin it to more to serve it)"
        return Verdict(Serviceability.UNAVAILABLE, reason, ErrorCode.MODEL_UNAVAILABLE)
    if _max_replicas(record) == 0:
        reason = f"model {model!r} is capped at 0 workers by its max_replicas label"
        return Verdict(Serviceability.UNAVAILABLE, reason, ErrorCode.MODEL_UNAVAILABLE)
    if not fleet.autoscaler_alive:
        if awaited is not None:
            return Verdict(Serviceability.STARTING, f"no worker serves model {model!r} right now; {awaited}")
        reason = f"no worker serves model {model!r} and no autoscaler is running to start one"
        return Verdict(Serviceability.UNAVAILABLE, reason, ErrorCode.MODEL_UNAVAILABLE)
    if facts.placement_failed is not None:
        reason = f"model {model!r} cannot be placed on any worker: {facts.placement_failed}"
        return Verdict(Serviceability.UNAVAILABLE, reason, ErrorCode.MODEL_UNAVAILABLE)
    return Verdict(Serviceability.STARTING, f"no worker serves model {model!r} yet; the autoscaler starts one")


def _max_replicas(record: ModelRecord) -> int | None:
    try:
        return ModelLimits.from_labels(record.labels).max_replicas
    except SchemaError:  # a bad label: the autoscaler ignores it too
        return None


class ServiceabilityView:
    """Cached `judge` verdicts read from Redis; raises BackendDownError when Redis cannot be read in time."""

    def __init__(
        self,
        redis: Any,
        names: Names,
        *,
        ttl_s: float = 1.0,
        timeout_s: float = 1.0,
        external_scaler: bool = False,
        return_grace_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._names = names
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._external_scaler = external_scaler
        self._return_grace_s = return_grace_s
        self._clock = clock
        self._served_at: dict[str, float] = {}  # model -> when this view last saw a worker serve it
        self._lock = asyncio.Lock()
        self._fleet: tuple[float, FleetSnapshot] | None = None  # (read started at, snapshot)
        self._facts: dict[tuple[str, str], tuple[float, VersionFacts]] = {}

    async def verdict(self, record: ModelRecord) -> Verdict:
        """Whether a request for ``record``'s version would be served now."""
        asked = self._clock()
        cached = self._cached(record, asked)
        if cached is not None and (cached.state is not Serviceability.UNAVAILABLE):
            return cached
        async with self._lock:
            # A positive verdict read while this caller waited for the lock answers it too: otherwise every
            # request that arrived during a refresh read Redis again, one after another under the lock.
            fresh = self._cached(record, self._clock())
            if fresh is None or fresh.state is Serviceability.UNAVAILABLE:
                fresh = self._cached(record, asked, since=asked)
            if fresh is not None:
                return fresh
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._read(record, asked)
            except TimeoutError:
                raise BackendDownError("redis", f"model readiness took over {self._timeout_s:g} s") from None
            except (RedisError, OSError) as exc:
                raise BackendDownError("redis", f"model readiness failed: {exc or type(exc).__name__}") from None
        verdict = self._cached(record, asked, since=asked)
        assert verdict is not None
        return verdict

    async def check(self, record: ModelRecord) -> None:
        """Raise ModelUnavailableError when nothing can serve ``record``'s version; a Redis problem lets the
        request through (it then fails, or waits, on its own)."""
        try:
            verdict = await self.verdict(record)
        except BackendDownError:
            return
        if verdict.state is Serviceability.UNAVAILABLE:
            raise ModelUnavailableError(verdict)

    def reads_batches(self, model: str) -> bool:
        """Whether every worker serving ``model`` reads batch records, as of the last fleet read (False before
        one; the read is refreshed with the verdicts)."""
        fleet = self._fleet
        return fleet is not None and model in fleet[1].batch_models

    def _cached(self, record: ModelRecord, now: float, *, since: float | None = None) -> Verdict | None:
        """The verdict from what is cached: younger than ttl_s, or (``since``) read since then."""
        facts = self._facts.get((record.name, record.version))
        if self._fleet is None or facts is None:
            return None
        oldest = min(self._fleet[0], facts[0])
        if (since is not None and oldest < since) or now - oldest >= self._ttl_s:
            return None
        fleet = self._fleet[1]
        if (record.name, record.version) in fleet.resident:  # judge's first rule, without its arguments' cost
            verdict = _SERVED
        else:
            verdict = judge(record, fleet, facts[1], awaited=self._awaited(record.name, now))
        if verdict.state is Serviceability.SERVED:
            if len(self._served_at) >= 10_000 and record.name not in self._served_at:
                self._served_at.clear()
            self._served_at[record.name] = now
        return verdict

    def _awaited(self, model: str, now: float) -> str | None:
        """Why a worker is expected for ``model`` although no autoscaler runs (None: none is)."""
        if self._external_scaler:
            return "workers are scaled outside the fleet (FLEET_GATEWAY_EXTERNAL_SCALER): waiting for one"
        served_at = self._served_at.get(model)
        if served_at is not None and now - served_at < self._return_grace_s:
            return f"a worker served it {now - served_at:.0f} s ago: waiting for one to return"
        return None

    async def _read(self, record: ModelRecord, started: float) -> None:
        """Read the fleet (when older than ``started``) and the facts of ``record``'s version."""
        if self._fleet is None or self._fleet[0] < started:
            self._fleet = (started, await self._read_fleet())
        if len(self._facts) >= 10_000:
            self._facts.clear()
        self._facts[(record.name, record.version)] = (started, await self._read_facts(record.name, record.version))

    async def _read_fleet(self) -> FleetSnapshot:
        n = self._names
        now = now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(n.workers_key, int(now - _WORKER_WINDOW_MS), "+inf")
            pipe.exists(n.autoscaler_leader_key)
            pipe.zrangebyscore(n.inventory_index_key, int(now - _AUTOSCALER_REPORT_MS), "+inf", start=0, num=1)
            pipe.hgetall(n.pins_key)
            workers, leader, reports, raw_pins = await pipe.execute()
        ids = [_text(w) for w in workers]
        announced: set[str] = set()
        resident: set[tuple[str, str]] = set()
        batch_readers: set[str] = set()
        plain_readers: set[str] = set()  # models some worker reads without batch records
        if ids:
            async with self._redis.pipeline(transaction=False) as pipe:
                for worker in ids:
                    pipe.hmget(n.worker_key(worker), "state", "models", HEARTBEAT_CAPS)
                    pipe.get(n.residency_key(worker))
                replies = await pipe.execute()
            for (state, models, caps), residency in zip(replies[::2], replies[1::2], strict=True):
                if state is None or _text(state) == "stopped":
                    continue  # expired (dead) or stopped
                served = {*_names(models), *(m for m, _ in _resident(residency))}
                (batch_readers if CAP_BATCH in _names(caps) else plain_readers).update(served)
                if _text(state) not in LIVE_STATES:
                    continue  # draining: it may still read its records, but serves nothing new
                announced.update(_names(models))
                resident.update(_resident(residency))
        return FleetSnapshot(
            frozenset(announced),
            frozenset(resident),
            bool(leader) or bool(reports),
            _pins(raw_pins),
            frozenset(batch_readers - plain_readers),
        )

    async def _read_facts(self, model: str, version: str) -> VersionFacts:
        n = self._names
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(n.load_failure_key(model, version))
            pipe.hmget(n.decision_key(model), "pinned", "desired")
            pipe.hmget(n.placement_key(model), "state", "reason")
            raw_failure, (pinned, desired), (placement, reason) = await pipe.execute()
        failure = None
        if raw_failure is not None:
            try:
                failure = LoadFailure.from_bytes(raw_failure)
            except SchemaError:
                failure = LoadFailure(f"(unreadable record: {_text(raw_failure)[:200]})", now_ms())
        pinned_to_zero = pinned is not None and _text(pinned) == "1" and _text(desired or b"") == "0"
        placement_failed = None
        if placement is not None and _text(placement) == _SCHEDULE_FAILED:
            placement_failed = _text(reason or b"") or "no worker fits it"
        return VersionFacts(failure, pinned_to_zero, placement_failed)


#: What workers and the autoscaler wrote, as str; a corrupt value reads as something, never an exception.
_text = functools.partial(text, errors="replace")


def _names(value: Any) -> Iterable[str]:
    return () if value is None else (m.strip() for m in _text(value).split(",") if m.strip())


def _resident(raw: Any) -> Iterable[tuple[str, str]]:
    if raw is None:
        return ()
    try:
        return ((m.model, m.version) for m in WorkerResidency.from_bytes(raw).models)
    except SchemaError:
        return ()


def _pins(raw: dict[Any, Any]) -> dict[str, int]:
    pins: dict[str, int] = {}
    for model, value in raw.items():
        try:
            pins[_text(model)] = int(value)
        except ValueError:
            continue
    return pins
