"""The LRU and budget rules of `workers.residency` (pure), the manager's waiting and refusing with fake
loaders (no Redis: nothing is published), and the residency state's wire form."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from common.gpu import gpu_stats
from schemas import Names, SchemaError
from schemas.residency import ResidentModel, WorkerResidency
from workers.errors import ModelLoadError
from workers.residency import MB, Capacity, Residency
from workers.residency_manager import ResidencyManager, worker_capacity
from workers.residency_metrics import ResidencyMetrics


def _residency(budget_mb: int | None, *sizes_mb: int) -> Residency:
    residency = Residency(Capacity(None if budget_mb is None else budget_mb * MB))
    for i, size in enumerate(sizes_mb):
        residency.add((f"m{i}", "1"), size * MB, now_ms=i)
        residency.unpin((f"m{i}", "1"))
    return residency


@pytest.mark.parametrize(
    ("budget", "resident", "needed", "victims"),
    [
        (100, (), 40, []),  # empty: fits
        (100, (30, 30), 40, []),  # exactly fits
        (100, (30, 30, 30), 40, ["m0"]),  # the least recently used goes first
        (100, (30, 30, 30), 70, ["m0", "m1"]),
        (100, (50, 10, 10), 60, ["m0"]),  # one big old one frees enough
        (100, (10, 10, 50), 50, ["m0", "m1"]),  # LRU order, not size order (m2 alone would do)
        (100, (20, 20, 20, 20, 20), 100, ["m0", "m1", "m2", "m3", "m4"]),
        (None, (500, 500), 10_000, []),  # unlimited
    ],
)
def test_plan_evicts_least_recently_used_first(
    budget: int | None, resident: tuple[int, ...], needed: int, victims: list[str]
) -> None:
    plan = _residency(budget, *resident).plan(needed * MB)
    assert plan is not None and [model for model, _ in plan] == victims


def test_use_moves_a_model_to_the_back_of_the_queue() -> None:
    residency = _residency(100, 30, 30, 30)
    assert residency.pin(("m0", "1"), now_ms=10)
    residency.unpin(("m0", "1"))
    assert residency.keys == [("m1", "1"), ("m2", "1"), ("m0", "1")]
    assert residency.plan(40 * MB) == [("m1", "1")]
    assert residency.get(("m0", "1")) is not None and residency.get(("m0", "1")).last_used_ms == 10  # type: ignore[union-attr]


def test_pinned_models_are_never_victims() -> None:
    residency = _residency(100, 30, 30, 30)
    residency.pin(("m0", "1"), now_ms=0)  # a batch runs on m0 (it also becomes the most recent)
    assert residency.plan(40 * MB) == [("m1", "1")]
    residency.pin(("m1", "1"), now_ms=1)
    residency.pin(("m2", "1"), now_ms=2)
    assert residency.plan(40 * MB) is None  # everything in use: wait for a release
    residency.unpin(("m1", "1"))
    assert residency.plan(40 * MB) == [("m1", "1")]


def test_a_model_larger_than_the_budget_is_refused_with_the_figures() -> None:
    residency = _residency(50)
    with pytest.raises(ValueError, match=r"needs 60.0 MB, budget 50.0 MB"):
        residency.plan(60 * MB)


def test_resize_remove_and_used_bytes() -> None:
    residency = _residency(100, 30, 30)
    residency.resize(("m0", "1"), 10 * MB)
    assert residency.used_bytes == 40 * MB and residency.free_bytes() == 60 * MB
    assert residency.remove(("m1", "1")) is not None and residency.remove(("m1", "1")) is None
    assert residency.keys == [("m0", "1")] and ("m0", "1") in residency


@pytest.mark.parametrize(
    ("budget", "pct", "sizes", "ok"),
    [
        (100, 10, [50, 60], True),  # 110 <= 110
        (100, 10, [50, 61], False),
        (100, 0, [100], True),
        (100, 100, [50] * 4, True),  # 2x
        (100, 100, [50] * 5, False),
        (None, 10, [10_000], True),
    ],
)
def test_overcommit_bounds_what_may_be_assigned(budget: int | None, pct: float, sizes: list[int], ok: bool) -> None:
    capacity = Capacity(None if budget is None else budget * MB, pct)
    reason = capacity.overcommitted({f"m{i}": s * MB for i, s in enumerate(sizes)})
    assert (reason is None) is ok
    if not ok:
        assert "overcommit" in (reason or "")


def test_residency_state_round_trips_and_rejects_garbage() -> None:
    state = WorkerResidency("w1", 100, 110, 30, (ResidentModel("m", "1", 30, 1.0, 2.0),), 3.0)
    assert WorkerResidency.from_bytes(state.to_bytes()) == state
    unlimited = WorkerResidency("w1", None, None, 0, (), 3.0)
    assert WorkerResidency.from_bytes(unlimited.to_bytes()) == unlimited
    for garbage in (b"not json", b"[]", b'{"v": 1}', b'{"v": 9}'):
        with pytest.raises(SchemaError):
            WorkerResidency.from_bytes(garbage)


def _manager(budget: int | None) -> ResidencyManager:
    metrics = ResidencyMetrics(CollectorRegistry())
    return ResidencyManager(Capacity(budget), metrics, Names("t"), "w", interval_s=1.0)


async def test_a_load_waits_while_pinned_models_leave_no_room_then_evicts_the_released_one() -> None:
    manager = _manager(2 * MB)
    evicted: list[str] = []

    async def load(name: str, size: int = MB) -> str:
        async def loader() -> tuple[str, int]:
            return name, size

        async def evict() -> None:
            evicted.append(name)

        return await manager.load((name, "1"), size, loader, evict)

    assert await load("a") == "a" and await load("b") == "b"  # both pinned by their loads (batches running)
    waiting = asyncio.create_task(load("c"))
    await asyncio.sleep(0.05)
    assert not waiting.done() and evicted == []  # no room until a batch ends
    manager.unpin(("b", "1"))
    assert await asyncio.wait_for(waiting, 5) == "c"
    assert evicted == ["b"] and [m for m, _ in manager.residency.keys] == ["a", "c"]
    assert manager.state().resident_bytes == 2 * MB


async def test_a_measured_footprint_over_the_budget_is_unloaded_and_reported() -> None:
    manager = _manager(2 * MB)
    evicted: list[str] = []

    async def loader() -> tuple[str, int]:
        return "big", 3 * MB  # the estimate said 1 MB

    async def evict() -> None:
        evicted.append("big")

    with pytest.raises(ModelLoadError, match=r"measured footprint needs 3.0 MB, budget 2.0 MB"):
        await manager.load(("big", "1"), MB, loader, evict)
    assert evicted == ["big"] and manager.residency.keys == [] and manager.fits_now(2 * MB)


def test_the_budget_comes_from_the_setting_else_the_gpu_else_unlimited() -> None:
    assert worker_capacity(100, 10, "cpu") == Capacity(100 * MB, 10)
    assert worker_capacity(0, 10, "cpu") == Capacity(None, 10)
    if not gpu_stats():  # no NVML here: a CUDA worker without a visible GPU has no GPU budget either
        assert worker_capacity(0, 25, "cuda:0") == Capacity(None, 25)
