"""The placement backend (``FLEET_AUTOSCALER_PLACEMENT=true``): the autoscaler's replica counts become
placements on the running workers that follow an assignment, instead of worker processes or Deployments.

``scale(model, n)`` records the desired count; ``place(models, decisions=)`` (each service round) runs the
placement rules (`autoscaler.placement_store`) with it and each model's measured work; ``replicas(model)`` is
the number of workers the model is placed on. The desired count of a model never scaled by this process is the
one stored with its placement status (so a restart keeps it), else 1. The workers themselves are run by the
operator (Compose, Helm, ``fleet up`` with fixed workers) with ``FLEET_WORKER_FOLLOW_ASSIGNMENT=true``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from schemas import FleetSettings, Names

from ..errors import BackendError
from ..placement import Placement
from ..placement_store import PlacementRunner, read_placement
from ..policy import Decision

log = logging.getLogger("fleet.autoscaler")


class PlacementBackend:
    """Replica counts as placements on following workers (state in Redis, read back after a restart)."""

    def __init__(self, fleet: FleetSettings, *, size_factor: float = 3.0, full_round_s: float = 30.0) -> None:
        self._fleet = fleet
        self._names = Names(fleet.namespace)
        self._size_factor = size_factor
        self._full_round_s = full_round_s
        self._redis: Any = None
        self._runner: PlacementRunner | None = None
        self._desired: dict[str, int] = {}
        self._placed: dict[str, int] = {}
        #: The outcome of the last ``place``.
        self.last: Placement | None = None

    async def start(self) -> None:
        """Connect to Redis."""
        self._redis = self._fleet.redis.client()
        self._runner = PlacementRunner(
            self._redis, self._names, size_factor=self._size_factor, full_round_s=self._full_round_s
        )

    async def stop(self) -> None:
        """Close the client; assignments stay in Redis and the workers keep serving them."""
        redis, self._redis = self._redis, None
        self._runner = None
        if redis is not None:
            await redis.aclose()

    async def _load(self, models: Sequence[str]) -> None:
        """Read the stored placement of models this process has not seen yet."""
        unseen = [m for m in models if m not in self._placed]
        if not unseen:
            return
        try:
            stored = await read_placement(self._redis, self._names, unseen)
        except RedisError as exc:
            raise BackendError(f"placement state unreadable: {exc}") from exc
        for model in unseen:
            status = stored.get(model, {})
            self._placed[model] = len([w for w in status.get("workers", "").split(",") if w])
            replicas = status.get("replicas", "")
            self._desired.setdefault(model, int(replicas) if replicas.isdigit() else 1)

    async def replicas(self, model: str) -> int:
        """Workers ``model`` is placed on."""
        await self._load([model])
        return self._placed[model]

    async def scale(self, model: str, replicas: int) -> None:
        """Place ``replicas`` of ``model`` from the next round on."""
        self._desired[model] = replicas

    def expected_workers(self) -> int | None:
        """Workers meant to run (None: whatever follows an assignment; the operator runs them)."""
        return None

    async def place(
        self, models: Sequence[str], *, decisions: Mapping[str, Decision] | None = None, force: bool = False
    ) -> Placement:
        """One placement round over ``models``; raises BackendError when Redis is unreachable.

        ``decisions``: the latest per-model decisions, whose measured work (`Decision.work`) weighs each model's
        replicas when the load is evened out. ``force``: place even when nothing the round reads changed since
        the last one (a worker joined)."""
        if self._runner is None:
            raise BackendError("the placement backend is not started")
        await self._load(models)
        work = {m: d.work for m, d in decisions.items()} if decisions else None
        try:
            desired = {m: self._desired[m] for m in models}
            result = await self._runner.run(
                models, desired, expected_workers=self.expected_workers(), work=work, force=force
            )
        except RedisError as exc:
            raise BackendError(f"placement round failed: {exc}") from exc
        if result is not self.last:
            for model in models:
                status = result.status.get(model)
                self._placed[model] = 0 if status is None else len(status.workers)
        self.last = result
        return result
