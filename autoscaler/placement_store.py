"""Runs the placement rules (`autoscaler.placement`) against Redis: reads the registry, the live workers
that follow an assignment (heartbeat ``follows=1``, labels, residency) and their current assignment,
then writes ``Names.assignment_key`` per worker and ``Names.placement_key`` per model.

What a round costs does not grow with idle models: the registry is read through a `RegistryCache` (one GET of
the registry epoch while nothing changed), an assignment or a placement status is written only when it
changed (one transaction for all the writes, which also bumps ``Names.placement_epoch_key`` when a placement
status changed, followed by one PUBLISH on ``Names.assignments_channel`` naming the workers concerned, so they
act at once rather than on their next poll), and ``Names.placement_round_key`` is stamped every round, which
`read_placement` reports as the status's ``ts_ms`` (that round confirmed it). A round whose inputs (models,
desired replicas, measured work, registry epoch, the live workers' room, labels and resident models, their
assignments) are those of the last one that placed does not run the rules again: its outcome would be the same
(`PlacementRunner`, ``full_round_s``). The workers and their
assignments are read back from Redis on each round, so a restarted scheduler keeps the placement it finds
(the rules are stable). Model labels it reads (`schemas.limits`): ``requires`` (comma list of
worker labels), ``max_replicas`` (caps the replicas placed), ``gpus`` (GPU indices it may use).
A model's size is its default version's plus that of every other version its traffic split gives a share
(a canary's workers hold both), each on a CPU and on a GPU worker.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from common import text
from schemas import FleetError, ModelRecord, Names, SchemaError, now_ms
from schemas.assignment_news import AssignmentNews
from schemas.constants import CPU, GPU
from schemas.limits import ModelLimits
from schemas.registry import RegistryCache
from schemas.residency import WorkerResidency

from .placement import (
    REBALANCE_MOVES,
    ModelDemand,
    ModelPlacement,
    Placement,
    PlacementState,
    WorkerSlot,
    place,
)

log = logging.getLogger("fleet.autoscaler")

#: Heartbeat states of a worker that may be given models.
_LIVE_STATES = {"starting", "ready"}
#: The heartbeat fields placement reads (``ts_ms``: written by every beat, so the hash exists).
_BEAT_FIELDS = ("ts_ms", "follows", "state", "labels")


def label_set(value: str) -> frozenset[str]:
    """``"gpu, onnx"`` -> {"gpu", "onnx"} (empty items dropped)."""
    return frozenset(part.strip() for part in value.split(",") if part.strip())


#: A version's record with its footprints measured so far by device kind (`ModelRegistry.measured_sizes`).
SizedVersion = tuple[ModelRecord, Mapping[str, int]]


def version_sizes(version: SizedVersion, size_factor: float) -> tuple[int, int]:
    """(CPU, GPU) bytes of one version: measured on that kind of device, else the record's size (measured
    on the other kind, else artifact x factor)."""
    record, measured = version
    fallback = record.size_bytes if record.size_measured else int(record.size_bytes * size_factor)
    return measured.get(CPU, fallback), measured.get(GPU, fallback)


def demand_of(
    record: ModelRecord,
    replicas: int,
    size_factor: float,
    measured: Mapping[str, int] | None = None,
    others: Sequence[SizedVersion] = (),
    work: float = 0.0,
) -> ModelDemand:
    """A model's demand: the bytes a worker would account on a CPU and on a GPU for the default version
    ``record`` plus ``others`` (the other versions its traffic split sends requests to, resident at the
    same time), the default's limits (`schemas.limits`: ``requires``, ``max_replicas``, ``gpus``) and its
    measured ``work`` (in workers: what rebalancing weighs it by); raises SchemaError on a bad limit label."""
    sizes = [version_sizes((record, measured or {}), size_factor)]
    sizes += [version_sizes(other, size_factor) for other in others]
    limits = ModelLimits.from_labels(record.labels)
    if limits.max_replicas is not None:
        replicas = min(replicas, limits.max_replicas)
    return ModelDemand(
        record.name,
        sum(cpu for cpu, _ in sizes),
        max(0, replicas),
        limits.requires,
        limits.gpus,
        gpu_size_bytes=sum(gpu for _, gpu in sizes),
        work=work,
    )


@dataclass(frozen=True)
class _RoundInputs:
    """Everything a placement round's outcome depends on (with the registry as of ``registry_reloads``)."""

    models: tuple[str, ...]
    desired: dict[str, int]
    work: dict[str, float]
    growing: bool
    registry_reloads: int
    workers: tuple[WorkerSlot, ...]  # a slot's equality leaves out its last uses (they only order a rebalance)
    current: dict[str, set[str]]
    gone: tuple[str, ...]  # workers whose heartbeat expired (their assignments were deleted)


class PlacementRunner:
    """One placement round per ``run()``; keeps the registry cache and what it wrote between rounds.

    ``rebalance_moves``: replicas a round moves at most to even the workers' load (`autoscaler.placement`,
    rule 3; 0: never move a model that is fine where it is). ``full_round_s``: a round whose inputs (models,
    desired replicas, measured work, registry epoch, live workers with their room, labels and resident models,
    their assignments, whether the pool is growing) are those of the last round that placed keeps its outcome
    without placing again (it still reads those inputs and stamps ``Names.placement_round_key``: the outcome was
    confirmed), except that one places at least every ``full_round_s`` seconds (0: every round)."""

    def __init__(
        self,
        redis: Any,
        names: Names,
        *,
        size_factor: float = 3.0,
        rebalance_moves: int = REBALANCE_MOVES,
        full_round_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._names = names
        self._size_factor = size_factor
        self._rebalance_moves = rebalance_moves
        self._full_round_s = full_round_s
        self._clock = clock
        self._registry = RegistryCache(redis, names)
        #: The placement status this runner last wrote per model (without its time).
        self._written: dict[str, dict[str, str]] = {}
        #: The inputs and outcome of the last round that placed, and when it ran.
        self._last: tuple[_RoundInputs, Placement, float] | None = None
        #: Rounds that placed, and rounds that kept the last outcome (inputs unchanged), for tests and logs.
        self.placed_rounds = 0
        self.kept_rounds = 0

    async def run(
        self,
        models: Sequence[str],
        desired: Mapping[str, int],
        *,
        expected_workers: int | None = None,
        work: Mapping[str, float] | None = None,
        force: bool = False,
    ) -> Placement:
        """Place ``models`` (``desired`` replicas each, 1 when absent) and store the result; raises RedisError.

        ``expected_workers``: how many workers the pool is meant to have; while fewer are live, a model short of
        room is PENDING (they are starting), not a failure that the gateway would answer 503 for.
        ``work``: each model's measured work in workers, where known (rebalancing moves idle models first and
        weighs a worker's load by it; counted to two decimals).
        ``force``: place even when the inputs are those of the last round (a worker joined).
        """
        workers, gone = await self._workers()
        current = await self._current([w.worker for w in workers])
        registry = self._registry
        try:
            await registry.refresh()
        except FleetError as exc:  # BackendUnavailableError: a RedisError for the caller
            raise RedisError(exc.message) from exc
        loads = {m: round(w, 2) for m, w in (work or {}).items() if w >= 0.005}
        inputs = _RoundInputs(
            tuple(models),
            {m: desired.get(m, 1) for m in models},
            {m: loads[m] for m in models if m in loads},
            expected_workers is not None and expected_workers > len(workers),
            registry.reloads,
            tuple(workers),
            current,
            tuple(gone),
        )
        now = self._clock()
        last = self._last
        if not force and last is not None and now - last[2] < self._full_round_s and inputs == last[0]:
            self.kept_rounds += 1
            try:
                await self._redis.set(self._names.placement_round_key, str(int(now_ms())))
            except RedisError:
                self._last = None  # place again next round
                raise
            return last[1]
        self._last = None
        result = self._place(inputs)
        await self._write(result, current, gone)
        self._last = (inputs, result, now)
        self.placed_rounds += 1
        return result

    def _place(self, inputs: _RoundInputs) -> Placement:
        """The placement rules over ``inputs`` (a model whose record is unusable gets a SCHEDULE_FAILED status)."""
        registry = self._registry
        demands: list[ModelDemand] = []
        unreadable: dict[str, str] = {}
        for model in inputs.models:
            try:
                record, measured = registry.get_sized(model)
                split = registry.traffic(model)
                others = [
                    registry.get_sized(model, version)
                    for version, share in (split.weights if split is not None else ())
                    if share > 0 and version != record.version
                ]
                load = inputs.work.get(model, 0.0)
                demands.append(demand_of(record, inputs.desired[model], self._size_factor, measured, others, load))
            except (FleetError, SchemaError) as exc:
                unreadable[model] = exc.message
        result = place(
            demands, inputs.workers, inputs.current, growing=inputs.growing, max_moves=self._rebalance_moves
        )
        if result.moves:
            pairs = Counter((source, target) for _, source, target in result.moves)
            log.info(
                "placement: rebalancing moves %s",
                ", ".join(f"{n} model(s) from {s} to {t}" for (s, t), n in sorted(pairs.items())),
            )
        for model, why in unreadable.items():
            result.status[model] = ModelPlacement(PlacementState.SCHEDULE_FAILED, (), 0, f"unusable record: {why}")
        return result

    async def _workers(self) -> tuple[list[WorkerSlot], list[str]]:
        ids = [text(i) for i in await self._redis.zrange(self._names.workers_key, 0, -1)]
        if not ids:
            return [], []
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker in ids:
                # Only the fields placement uses: a pool worker's heartbeat also lists every partition it owns.
                pipe.hmget(self._names.worker_key(worker), _BEAT_FIELDS)
                pipe.get(self._names.residency_key(worker))
            raw = await pipe.execute()
        slots: list[WorkerSlot] = []
        gone: list[str] = []
        for i, worker in enumerate(ids):
            beat = {k: text(v) for k, v in zip(_BEAT_FIELDS, raw[2 * i], strict=True) if v is not None}
            if not beat:  # every heartbeat has ts_ms: the hash is gone
                gone.append(worker)
                continue
            if beat.get("follows") != "1" or beat.get("state") not in _LIVE_STATES or raw[2 * i + 1] is None:
                continue
            try:
                residency = WorkerResidency.from_bytes(raw[2 * i + 1])
            except SchemaError as exc:
                log.warning("placement skips worker %s: %s", worker, exc.message)
                continue
            slots.append(
                WorkerSlot(
                    worker,
                    residency.assignable_bytes,
                    label_set(beat.get("labels", "")),
                    frozenset(m.model for m in residency.models),
                    {m.model: m.last_used_ms for m in residency.models},
                )
            )
        return slots, gone

    async def _current(self, workers: Sequence[str]) -> dict[str, set[str]]:
        if not workers:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.smembers(self._names.assignment_key(worker))
            sets = await pipe.execute()
        return {w: {text(m) for m in s} for w, s in zip(workers, sets, strict=True)}

    async def _write(self, result: Placement, current: Mapping[str, set[str]], gone: Sequence[str]) -> None:
        ts = str(int(now_ms()))
        changed: dict[str, dict[str, str]] = {}
        for model, status in result.status.items():
            fields = {
                "state": status.state.value,
                "workers": ",".join(status.workers),
                "replicas": str(status.replicas),
                "reason": status.reason,
            }
            if self._written.get(model) != fields:
                changed[model] = fields
        named: set[str] = set()  # workers whose assignment or a model's replicas (old or new) changed
        for model, fields in changed.items():
            was = self._written.get(model, {}).get("workers", "")
            named.update(w for w in f"{was},{fields['workers']}".split(",") if w)
        async with self._redis.pipeline(transaction=True) as pipe:
            for worker in gone:  # heartbeat expired: its models were placed elsewhere this round
                pipe.delete(self._names.assignment_key(worker))
            for worker, assigned in result.assignments.items():
                if assigned == current.get(worker, set()):
                    continue
                key = self._names.assignment_key(worker)
                pipe.delete(key)
                if assigned:
                    pipe.sadd(key, *sorted(assigned))
                named.add(worker)
                before = current.get(worker, set())
                log.info(
                    "placement: worker %s serves %d model(s): +%s -%s",
                    worker,
                    len(assigned),
                    ",".join(sorted(assigned - before)) or "none",
                    ",".join(sorted(before - assigned)) or "none",
                )
            for model, fields in changed.items():
                key = self._names.placement_key(model)
                pipe.delete(key)
                pipe.hset(key, mapping={**fields, "ts_ms": ts})
            if changed:  # pool workers re-read their models' placements only when this moved
                pipe.incr(self._names.placement_epoch_key)
            pipe.set(self._names.placement_round_key, ts)
            try:
                await pipe.execute()
            except RedisError:
                self._written.clear()  # unknown what was stored: write everything next round
                raise
        self._written = {m: w for m, w in self._written.items() if m in result.status}
        self._written.update(changed)
        if named:
            await self._announce(named)

    async def _announce(self, workers: set[str]) -> None:
        """Tell ``workers`` their placement changed (they poll as well: a lost message only delays them)."""
        try:
            await self._redis.publish(self._names.assignments_channel, AssignmentNews.assigned(workers).to_bytes())
        except RedisError as exc:
            log.warning("placement news not published (the workers pick the change up on their next poll): %s", exc)


async def read_placement(redis: Any, names: Names, models: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each model's stored placement status (models without one are left out); raises RedisError. Its
    ``ts_ms`` is that of the last round that confirmed it: the scheduler's last round
    (``Names.placement_round_key``) when that is later than the status's last change."""
    if not models:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(names.placement_round_key)
        for model in models:
            pipe.hgetall(names.placement_key(model))
        stamp, *hashes = await pipe.execute()
    statuses = {m: {text(k): text(v) for k, v in h.items()} for m, h in zip(models, hashes, strict=True) if h}
    round_ms = text(stamp) if stamp is not None else ""
    if round_ms.isdigit():
        for status in statuses.values():
            if int(round_ms) > int(float(status.get("ts_ms") or 0)):
                status["ts_ms"] = round_ms
    return statuses
