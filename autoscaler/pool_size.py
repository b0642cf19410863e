"""How many pool workers to run: the pure rule (no I/O, no clock of its own, like `autoscaler.policy`).

A pool worker serves many models (``FLEET_WORKER_MODE=pool`` following its assignment); the placement
scheduler spreads each model's replicas over the pool. The pool needs, at least:

1. as many workers as the most replicas any model wants (replicas of one model go to distinct workers);
2. room for every wanted replica: ``ceil(sum(replicas x size) / what one worker may hold)`` (a worker may hold
   its budget x (1 + overcommit); unlimited when not configured);
3. workers for the measured work: ``ceil(sum of the models' raw replicas)``, the per-model policy's
   ``lag / (throughput x target_drain_s) + arrival / throughput`` summed (pinned models count their pin).

The largest of the three, within ``min_workers..max_workers``. When no model wants a replica the pool may go
to ``min_workers`` (0 allows scale to zero; a request for any model then wakes its model, which wakes the pool).
Scale up at once; scale down only to the highest recommendation of the last ``scale_down_stabilization_s``
(as the per-model policy), so a short lull does not drain a worker that is needed again a moment later.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from .policy import Decision

#: Slack for ``ceil`` so that 2.0000000001 (float noise) does not become 3.
_EPSILON = 1e-9


@dataclass(frozen=True)
class PoolDemand:
    """What the models want of the pool this round."""

    #: The most replicas any one model wants.
    most_replicas: int = 0
    #: Sum of the models' raw replicas (measured work, in workers).
    work: float = 0.0
    #: Sum over models of wanted replicas x bytes per replica.
    demand_bytes: int = 0
    #: Models that want at least one replica.
    active_models: int = 0


def pool_demand(decisions: Iterable[Decision], sizes: dict[str, int] | None = None) -> PoolDemand:
    """The pool's demand from the per-model decisions of one round and each model's bytes per replica (pure)."""
    most, work, demand, active = 0, 0.0, 0, 0
    for decision in decisions:
        wanted = decision.desired
        most = max(most, wanted)
        raw = decision.inputs.get("raw_replicas")
        work += float(wanted) if decision.pinned or not isinstance(raw, int | float) else float(raw)
        demand += wanted * (sizes or {}).get(decision.model, 0)
        active += wanted > 0
    return PoolDemand(most, work, demand, active)


@dataclass(frozen=True)
class PoolDecision:
    """Desired pool workers, with the reason."""

    current: int
    desired: int
    reason: str

    def why(self) -> str:
        """One log line."""
        return f"pool: {self.current} -> {self.desired} workers: {self.reason}"


class PoolSizer:
    """Turns a round's `PoolDemand` into a pool size; keeps only its scale-down window."""

    def __init__(
        self,
        min_workers: int,
        max_workers: int,
        *,
        worker_bytes: int | None = None,
        scale_down_stabilization_s: float = 30.0,
    ) -> None:
        if min_workers < 0 or max_workers < 1 or min_workers > max_workers:
            raise ValueError(f"need 0 <= min_workers <= max_workers, max_workers >= 1: {min_workers}..{max_workers}")
        self.min_workers = min_workers
        self.max_workers = max_workers
        #: What one worker may hold (budget x (1 + overcommit)); None: sizes do not bound the pool.
        self.worker_bytes = worker_bytes if worker_bytes else None
        self.scale_down_stabilization_s = scale_down_stabilization_s
        self._window: deque[tuple[float, int]] = deque()

    def decide(self, demand: PoolDemand, current: int, now: float) -> PoolDecision:
        """Desired pool workers now (``now``: monotonic seconds)."""
        by_room = 0
        if self.worker_bytes is not None and demand.demand_bytes > 0:
            by_room = math.ceil(demand.demand_bytes / self.worker_bytes - _EPSILON)
        by_work = max(0, math.ceil(demand.work - _EPSILON))
        wanted = max(demand.most_replicas, by_room, by_work)
        reasons = [
            f"most replicas of a model {demand.most_replicas}, room {by_room}, work {demand.work:.2f} -> {by_work}"
        ]
        if demand.active_models > 0 and wanted < 1:
            wanted = 1
        if wanted < self.min_workers:
            reasons.append(f"raised to min_workers {self.min_workers}")
            wanted = self.min_workers
        if wanted > self.max_workers:
            reasons.append(f"limited to max_workers {self.max_workers}")
            wanted = self.max_workers
        window = self._window
        if not window:  # a fresh sizer treats the running pool as recommended just now (no early drain)
            window.append((now, current))
        window.append((now, wanted))
        while window and window[0][0] < now - self.scale_down_stabilization_s:
            window.popleft()
        final = wanted
        if wanted < current:
            final = min(current, max(r for _, r in window))
            if final > wanted:
                reasons.append(f"scale-down held at {final}: highest of the last {self.scale_down_stabilization_s:g}s")
        return PoolDecision(current, final, "; ".join(reasons))
