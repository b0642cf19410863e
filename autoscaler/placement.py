"""Placement: which following worker serves which model (the pure rules; `autoscaler.placement_store` runs them).

Input: each model's demand (size, replicas, required labels) and each live worker that follows an
assignment (what it may hold = budget x (1 + overcommit), its labels, what it holds resident now), plus
the current assignment. Rules, in order:

1. Stable: a model stays where it is assigned while that worker is live, still has the labels it
   requires (and, on a GPU, is on one the model may use), the model is still wanted there (no more
   replicas than desired) and everything kept fits.
2. Missing replicas go to distinct workers with the required labels and room, preferring a worker where
   the model is resident already, then the one with the most room left (spreads load), then the least
   loaded (rule 3's load: with unlimited room, models spread from the first round), then by id.
   Larger models are placed first (they are the hardest to fit).
3. Rebalance (``max_moves`` > 0): while the load of the most and the least loaded worker differs by more
   than a margin (`rebalance_margin`), up to ``max_moves`` replicas a round move from the one to the other
   (a worker that joined a placed fleet gets its share; the move is the usual handover: the old owner
   commits and releases, the new one claims). A worker's load is its placed replicas, each weighing
   1 + the model's measured work per replica (in workers; unknown: 0). It moves first the models that are
   idle (no measured work), then those not resident on the source, then the least recently used, and only
   a replica weighing at most half the difference: a move never reverses the order of the two workers, so
   the sum of squared loads falls with every move and a balanced placement (within the margin) stays put.
4. A model short of replicas gets a ScheduleFailed status with the reason: no worker with the labels,
   or the room it needs against the largest room left.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from schemas.constants import GPU

MB = 1 << 20  # as the workers count (workers.residency.MB)

#: Replicas a placement round moves at most to even the workers' load (the autoscaler's default).
REBALANCE_MOVES = 25
#: Loads of two workers are even when they differ by at most this share of the mean load ...
REBALANCE_MARGIN_SHARE = 0.1
#: ... or by at most this much (a replica of an idle model weighs 1).
REBALANCE_MARGIN_MIN = 2.0


class PlacementState(StrEnum):
    """A model's placement status (``Names.placement_key``)."""

    PLACED = "placed"  # every desired replica has a worker
    PARTIAL = "partial"  # some replicas placed, not all (the reason says why)
    SCHEDULE_FAILED = "schedule_failed"  # no replica placed (the reason says why)
    PENDING = "pending"  # short of replicas while the pool starts the workers that can hold them
    IDLE = "idle"  # zero replicas desired


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """What one model needs: bytes per replica (on a CPU and on a GPU worker), how many replicas, labels a
    worker must have."""

    model: str
    size_bytes: int  # on a CPU worker
    replicas: int
    requires: frozenset[str] = frozenset()
    gpus: frozenset[int] | None = None  # GPU indices it may use (None = any); CPU workers are not affected
    gpu_size_bytes: int | None = None  # on a GPU worker (None: the same as size_bytes)
    work: float = 0.0  # measured work, in workers (the autoscaler's raw replicas; 0: idle or unknown)

    def size_on(self, slot: WorkerSlot) -> int:
        """Bytes a replica takes on ``slot``: its GPU size on a worker labelled ``gpu``."""
        if self.gpu_size_bytes is not None and GPU in slot.labels:
            return self.gpu_size_bytes
        return self.size_bytes

    @property
    def largest_bytes(self) -> int:
        """The larger of its two sizes (placement goes largest first)."""
        return max(self.size_bytes, self.gpu_size_bytes or 0)

    @property
    def weight(self) -> float:
        """What one replica adds to a worker's load: 1, plus its share of the model's measured work."""
        return 1.0 + max(0.0, self.work) / max(1, self.replicas)

    def allows(self, slot: WorkerSlot) -> bool:
        """True when ``slot`` has the required labels and, on a GPU, an allowed one."""
        if not self.requires <= slot.labels:
            return False
        on = {label for label in slot.labels if label.startswith("cuda:")}
        return self.gpus is None or not on or bool(on & {f"cuda:{i}" for i in self.gpus})


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """A live worker that follows its assignment."""

    worker: str
    assignable_bytes: int | None  # None = unlimited
    labels: frozenset[str] = frozenset()
    resident: frozenset[str] = frozenset()
    #: When each resident model was last used (ms, the worker's clock); rebalancing moves the coldest first.
    last_used: Mapping[str, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class ModelPlacement:
    """Where a model's replicas went, and why some did not."""

    state: PlacementState
    workers: tuple[str, ...]
    replicas: int
    reason: str = ""


@dataclass(slots=True)
class Placement:
    """The outcome: worker -> assigned models, model -> status, and the rebalancing moves made."""

    assignments: dict[str, set[str]] = field(default_factory=dict)
    status: dict[str, ModelPlacement] = field(default_factory=dict)
    #: (model, from worker, to worker) of each replica moved to even the load, in order.
    moves: list[tuple[str, str, str]] = field(default_factory=list)


def _mb(size: int | None) -> str:
    """``900 MB``; small sizes keep their precision (``2.5 MB``, ``12 KB``) so a reason never reads ``0 MB``."""
    if size is None:
        return "unlimited"
    if size >= 10 * MB:
        return f"{size / MB:.0f} MB"
    if size >= MB // 10:
        return f"{size / MB:.1f} MB"
    return f"{size / 1024:.0f} KB"


class _Room:
    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot
        self.used = 0
        self.load = 0.0  # the weights of the replicas placed on it (rule 3)

    def free(self) -> int | None:
        cap = self.slot.assignable_bytes
        return None if cap is None else cap - self.used

    def free_or_max(self) -> int:
        free = self.free()
        return 1 << 62 if free is None else free

    def fits(self, size: int) -> bool:
        free = self.free()
        return free is None or size <= free


def place(
    demands: Sequence[ModelDemand],
    workers: Sequence[WorkerSlot],
    current: Mapping[str, set[str]],
    *,
    growing: bool = False,
    max_moves: int = 0,
) -> Placement:
    """Assign ``demands`` to ``workers``, keeping ``current`` (worker -> models) where it is still fine.

    ``growing``: more workers are starting (a pool the autoscaler is growing), so a model short of replicas for
    want of workers or room is PENDING, not a failure; one that no worker's labels allow still fails.
    ``max_moves``: replicas this round may move to even the workers' load (0: none; rule 3).
    """
    rooms = {w.worker: _Room(w) for w in workers}
    by_model = {d.model: d for d in demands}
    out = Placement(assignments={w.worker: set() for w in workers})
    holders: dict[str, list[str]] = {d.model: [] for d in demands}
    # 1. keep what is fine where it is (workers in id order, models in name order: deterministic)
    for worker in sorted(rooms):
        room = rooms[worker]
        for model in sorted(current.get(worker, ())):
            demand = by_model.get(model)
            if demand is None or len(holders[model]) >= demand.replicas:
                continue
            size = demand.size_on(room.slot)
            if not demand.allows(room.slot) or not room.fits(size):
                continue
            room.used += size
            room.load += demand.weight
            holders[model].append(worker)
            out.assignments[worker].add(model)
    # 2. place the missing replicas, largest models first
    for demand in sorted(demands, key=lambda d: (-d.largest_bytes, d.model)):
        missing = demand.replicas - len(holders[demand.model])
        labelled = [r for r in rooms.values() if demand.allows(r.slot)]
        candidates = [
            r for r in labelled if r.slot.worker not in holders[demand.model] and r.fits(demand.size_on(r.slot))
        ]
        candidates.sort(
            key=lambda r: (demand.model not in r.slot.resident, -r.free_or_max(), r.load, r.slot.worker)
        )
        for room in candidates[: max(0, missing)]:
            room.used += demand.size_on(room.slot)
            room.load += demand.weight
            holders[demand.model].append(room.slot.worker)
            out.assignments[room.slot.worker].add(demand.model)
        out.status[demand.model] = _status(demand, holders[demand.model], rooms, labelled, growing)
    # 3. even the load
    if max_moves > 0:
        _rebalance(out, by_model, rooms, holders, max_moves)
        for model in {model for model, _, _ in out.moves}:
            moved = by_model[model]
            labelled = [r for r in rooms.values() if moved.allows(r.slot)]
            out.status[model] = _status(moved, holders[model], rooms, labelled, growing)
    return out


def rebalance_margin(loads: Sequence[float]) -> float:
    """How far two workers' loads may differ before models move: a share of the mean, at least a minimum."""
    mean = sum(loads) / len(loads) if loads else 0.0
    return max(REBALANCE_MARGIN_MIN, REBALANCE_MARGIN_SHARE * mean)


def worker_loads(assignments: Mapping[str, set[str]], demands: Mapping[str, ModelDemand]) -> dict[str, float]:
    """Each worker's load: the weights (`ModelDemand.weight`) of the replicas placed on it."""
    return {
        worker: sum(demands[m].weight for m in models if m in demands) for worker, models in assignments.items()
    }


def _rebalance(
    out: Placement,
    demands: Mapping[str, ModelDemand],
    rooms: Mapping[str, _Room],
    holders: dict[str, list[str]],
    max_moves: int,
) -> None:
    """Move up to ``max_moves`` replicas from the most to the least loaded workers (rule 3)."""
    loads = worker_loads(out.assignments, demands)
    if len(loads) < 2:
        return
    margin = rebalance_margin(list(loads.values()))
    while len(out.moves) < max_moves:
        move = _next_move(out, demands, rooms, loads, margin)
        if move is None:
            return
        model, source, target = move
        demand = demands[model]
        out.assignments[source].discard(model)
        out.assignments[target].add(model)
        rooms[source].used -= demand.size_on(rooms[source].slot)
        rooms[target].used += demand.size_on(rooms[target].slot)
        loads[source] -= demand.weight
        loads[target] += demand.weight
        holders[model] = [target if w == source else w for w in holders[model]]
        out.moves.append(move)


def _next_move(
    out: Placement,
    demands: Mapping[str, ModelDemand],
    rooms: Mapping[str, _Room],
    loads: Mapping[str, float],
    margin: float,
) -> tuple[str, str, str] | None:
    """The best replica to move now: from the most loaded worker that has one that fits on a less loaded one
    (the least loaded first), whose load differs by more than ``margin``; None when the load is even."""
    order = sorted(loads, key=lambda w: (loads[w], w))
    for source in reversed(order):
        slot = rooms[source].slot
        for target in order:
            gap = loads[source] - loads[target]
            if gap <= margin:
                break  # the targets after this one are loaded more still
            room = rooms[target]
            movable = [
                demands[m]
                for m in out.assignments[source]
                if m in demands
                and m not in out.assignments[target]
                and demands[m].weight <= gap / 2
                and demands[m].allows(room.slot)
                and room.fits(demands[m].size_on(room.slot))
            ]
            if movable:
                best = min(
                    movable,
                    key=lambda d: (
                        d.work > 0,  # idle models first: a hot one is not disturbed while others can go
                        d.model in slot.resident,  # then those not loaded on the source
                        slot.last_used.get(d.model, 0.0),  # then the least recently used
                        d.model,
                    ),
                )
                return best.model, source, target
    return None


def _status(
    demand: ModelDemand, holders: list[str], rooms: Mapping[str, _Room], labelled: list[_Room], growing: bool
) -> ModelPlacement:
    placed = tuple(sorted(holders))
    if demand.replicas <= 0:
        return ModelPlacement(PlacementState.IDLE, placed, 0)
    if len(placed) >= demand.replicas:
        return ModelPlacement(PlacementState.PLACED, placed, demand.replicas)
    capacity = True  # short for want of workers or room (which more workers bring), not of labels
    if not rooms:
        reason = "no live worker follows an assignment"
    elif not labelled and not any(demand.requires <= r.slot.labels for r in rooms.values()):
        missing = sorted(demand.requires - set().union(*(r.slot.labels for r in rooms.values())))
        what = ",".join(missing) if missing else ",".join(sorted(demand.requires))
        reason = f"no worker has label {what}" if missing else f"no worker has all the labels {what}"
        capacity = False
    elif not labelled:
        reason = f"no worker on an allowed GPU ({','.join(f'cuda:{i}' for i in sorted(demand.gpus or ()))})"
        capacity = False
    else:
        others = [r for r in labelled if r.slot.worker not in holders]
        if not others:
            reason = f"only {len(labelled)} worker(s) have the labels it requires"
        else:
            roomiest = max(others, key=lambda r: r.free_or_max())
            needs = demand.size_on(roomiest.slot)
            reason = f"needs {_mb(needs)}, largest free {_mb(max(0, roomiest.free_or_max()))}"
    state = PlacementState.PARTIAL if placed else PlacementState.SCHEDULE_FAILED
    if growing and capacity:
        state, reason = PlacementState.PENDING, f"{reason}; the pool is starting more workers"
    if placed:
        reason = f"{len(placed)} of {demand.replicas} replicas placed: {reason}"
    return ModelPlacement(state, placed, demand.replicas, reason)
