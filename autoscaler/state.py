"""The autoscaler's state as the rest of the fleet reads it: the one API ``fleet status``, ``fleet scale`` and the
local stack use, instead of the autoscaler's internal stores.

Everything here reads what the autoscaler's own modules write (the same Redis keys, through the same code):
the GPU inventory, the leader lease, each round's decisions, the placement statuses, and a Kafka lag snapshot
measured the way the autoscaler measures it. The one write is the pin (``fleet scale``), a runtime override
the autoscaler reads every round. Functions raise ``StateError`` (the autoscaler's error base) or RedisError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas import FleetSettings, Names

from .collector import LagCollector
from .decisions import DecisionRecord, DecisionStore
from .errors import AutoscalerError, StatsError
from .inventory import GpuInfo, GpuInventory, read_inventory
from .leader import read_leader
from .overrides import PinStore
from .placement import PlacementState
from .placement_store import read_placement
from .signals import ModelLoad

#: The base of every error these functions raise besides RedisError (and Kafka errors for ``measure_load``).
StateError = AutoscalerError

#: Placement states that settle a model without a worker for it: none could be placed, or none is wanted.
UNSERVED_PLACEMENTS = frozenset({PlacementState.SCHEDULE_FAILED.value, PlacementState.IDLE.value})

__all__ = [
    "UNSERVED_PLACEMENTS",
    "DecisionRecord",
    "GpuInfo",
    "GpuInventory",
    "ModelLoad",
    "PlacementState",
    "StateError",
    "StatsError",
    "measure_load",
    "pin",
    "read_decisions",
    "read_gpus",
    "read_leader",
    "read_pins",
    "read_placements",
    "unpin",
]


async def read_gpus(redis: Any, names: Names, *, max_age_s: float = 60.0) -> list[GpuInventory]:
    """The GPU inventories the autoscalers reported within ``max_age_s``, one per host; raises StatsError."""
    return await read_inventory(redis, names, max_age_s=max_age_s)


async def read_pins(redis: Any, names: Names) -> dict[str, int]:
    """Models pinned at runtime (``fleet scale``) -> their replica count."""
    return await PinStore(redis, names).pins()


async def pin(redis: Any, names: Names, model: str, replicas: int) -> None:
    """Hold ``model`` at ``replicas`` workers; the autoscaler applies it within one round."""
    await PinStore(redis, names).pin(model, replicas)


async def unpin(redis: Any, names: Names, model: str) -> None:
    """Remove the runtime pin of ``model``: the autoscaler decides again."""
    await PinStore(redis, names).unpin(model)


async def read_decisions(redis: Any, names: Names, models: Sequence[str]) -> dict[str, DecisionRecord]:
    """The last decision of the autoscaler's rounds about each model (models without one are left out)."""
    return await DecisionStore(redis, names).read(models)


async def read_placements(redis: Any, names: Names, models: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each model's placement status (``state``, ``workers``, ``reason``, ``ts_ms``; models without one are
    left out); ``state`` is a :class:`PlacementState` value."""
    return await read_placement(redis, names, models)


async def measure_load(settings: FleetSettings, models: Sequence[str]) -> dict[str, ModelLoad]:
    """One Kafka lag snapshot of ``models`` (log ends, committed offsets, lag per partition), measured as the
    autoscaler measures it; raises StateError or Kafka errors."""
    async with LagCollector(settings) as collector:
        return await collector.collect(models)
