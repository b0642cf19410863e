"""The pool backend (``FLEET_AUTOSCALER_POOL=true``): placements on a pool of multi-model workers whose size
the autoscaler chooses.

Per model it is the placement backend (``scale(model, n)`` records the desired replicas; each round places
them on the pool's workers). Each round it also sizes the pool (`autoscaler.pool_size`) from the per-model
decisions and the models' sizes, and tells the pool's runner: the local process backend (``python -m workers``
pool workers on this machine) or the Kubernetes backend (the pool Deployment's scale subresource).

A drained pool worker (SIGTERM) publishes ``state=draining`` first, so the next placement round moves its
models to the others; meanwhile it finishes its rounds, commits, releases its partition leases and exits, and
the new owners resume from the committed offsets (nothing lost, nothing taken twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from redis.exceptions import RedisError

from schemas import FleetError, FleetSettings, SchemaError
from schemas.registry import RegistryCache

from ..errors import AutoscalerError, BackendError
from ..placement_store import demand_of
from ..policy import Decision
from ..pool_size import PoolDecision, PoolSizer, pool_demand
from .placement import PlacementBackend

log = logging.getLogger("fleet.autoscaler")


class PoolRunner(Protocol):
    """Runs the pool's workers: a one-key `Backend` (the key names the pool) with a lifetime."""

    async def replicas(self, model: str) -> int:
        """Pool workers running or starting."""
        ...

    async def scale(self, model: str, replicas: int) -> None:
        """Start or drain pool workers."""
        ...

    async def start(self) -> None:
        """Connect."""
        ...

    async def stop(self) -> None:
        """Release (the local runner drains its workers)."""
        ...


class PoolBackend(PlacementBackend):
    """Replica counts as placements on a pool of workers, and the pool sized to them."""

    def __init__(
        self,
        fleet: FleetSettings,
        runner: PoolRunner,
        sizer: PoolSizer,
        *,
        pool_key: str = "pool",
        size_factor: float = 3.0,
        full_round_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(fleet, size_factor=size_factor, full_round_s=full_round_s)
        self.runner = runner
        self.sizer = sizer
        self.pool_key = pool_key
        self._clock = clock
        self._sizes: RegistryCache | None = None
        #: The outcome of the last `size_pool`.
        self.last_size: PoolDecision | None = None

    async def start(self) -> None:
        """Connect to Redis and start the runner."""
        await super().start()
        self._sizes = RegistryCache(self._redis, self._names)
        await self.runner.start()

    async def stop(self) -> None:
        """Stop the runner (the local one drains its workers) and close the client."""
        try:
            await self.runner.stop()
        finally:
            self._sizes = None
            await super().stop()

    def expected_workers(self) -> int | None:
        """The pool size last decided: while fewer workers are live, models short of room are pending."""
        return None if self.last_size is None else self.last_size.desired

    async def pool_workers(self) -> int:
        """Pool workers running or starting now."""
        try:
            return await self.runner.replicas(self.pool_key)
        except AutoscalerError:
            raise
        except Exception as exc:
            raise BackendError(f"pool size unreadable: {exc!r}") from exc

    async def size_pool(self, decisions: Iterable[Decision]) -> PoolDecision:
        """Size the pool for this round's per-model decisions; raises BackendError when the runner fails."""
        decisions = list(decisions)
        sizes = await self._model_bytes([d.model for d in decisions if d.desired > 0])
        current = await self.pool_workers()
        decision = self.sizer.decide(pool_demand(decisions, sizes), current, self._clock())
        self.last_size = decision
        if decision.desired != current:
            log.info("%s", decision.why())
            try:
                await self.runner.scale(self.pool_key, decision.desired)
            except AutoscalerError:
                raise
            except Exception as exc:
                raise BackendError(f"pool scale to {decision.desired} failed: {exc!r}") from exc
        return decision

    async def _model_bytes(self, models: Sequence[str]) -> dict[str, int]:
        """Bytes per replica of ``models`` (their largest footprint, as placement counts them); only when one
        worker's room is bounded. A model whose record cannot be read counts 0 (placement reports it)."""
        cache = self._sizes
        if cache is None or self.sizer.worker_bytes is None or not models:
            return {}
        try:
            await cache.refresh()
        except (FleetError, RedisError) as exc:
            raise BackendError(f"registry unreadable for the pool's sizes: {exc}") from exc
        sizes: dict[str, int] = {}
        for model in models:
            try:
                record, measured = cache.get_sized(model)
                sizes[model] = demand_of(record, 1, self._size_factor, measured).largest_bytes
            except (FleetError, SchemaError):
                continue
        return sizes
