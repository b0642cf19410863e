"""The pool size rule (`autoscaler.pool_size`): pure, table-driven."""

from __future__ import annotations

import pytest

from autoscaler.policy import Decision
from autoscaler.pool_size import PoolDemand, PoolSizer, pool_demand

MB = 1 << 20


def _decision(model: str, desired: int, raw: float | None = None, *, pinned: bool = False) -> Decision:
    inputs = {} if raw is None else {"raw_replicas": raw}
    return Decision(model, 0, desired, "", dict(inputs), pinned=pinned)


def test_demand_sums_work_room_and_takes_the_most_replicas() -> None:
    decisions = [_decision("a", 3, 2.4), _decision("b", 1, 0.1), _decision("c", 0, 0.0), _decision("d", 2, pinned=True)]
    demand = pool_demand(decisions, {"a": 100 * MB, "b": 50 * MB, "d": 10 * MB})
    assert demand == PoolDemand(most_replicas=3, work=2.4 + 0.1 + 2.0, demand_bytes=370 * MB, active_models=3)


@pytest.mark.parametrize(
    ("demand", "expected", "why"),
    [
        (PoolDemand(most_replicas=3, work=0.5, active_models=1), 3, "replicas of one model need distinct workers"),
        (PoolDemand(most_replicas=1, work=2.2, active_models=5), 3, "measured work"),
        (PoolDemand(most_replicas=1, work=0.1, demand_bytes=250 * MB, active_models=4), 3, "room: 250 MB / 100 MB"),
        (PoolDemand(most_replicas=1, work=0.0, active_models=1), 1, "one active model needs a worker"),
        (PoolDemand(), 0, "nothing wanted: scale to zero"),
        (PoolDemand(most_replicas=9, work=9.0, active_models=9), 4, "limited to max_workers"),
    ],
)
def test_the_largest_need_within_bounds(demand: PoolDemand, expected: int, why: str) -> None:
    sizer = PoolSizer(0, 4, worker_bytes=100 * MB, scale_down_stabilization_s=0)
    assert sizer.decide(demand, 0, 0.0).desired == expected, why


def test_min_workers_is_kept_when_idle() -> None:
    assert PoolSizer(2, 4).decide(PoolDemand(), 2, 0.0).desired == 2
    assert PoolSizer(2, 4).decide(PoolDemand(), 0, 0.0).desired == 2


def test_sizes_do_not_count_without_a_worker_budget() -> None:
    demand = PoolDemand(most_replicas=1, work=0.1, demand_bytes=10_000 * MB, active_models=1)
    assert PoolSizer(0, 4).decide(demand, 1, 0.0).desired == 1


def test_scale_up_at_once_scale_down_after_the_window() -> None:
    sizer = PoolSizer(1, 4, scale_down_stabilization_s=10)
    busy, idle = PoolDemand(most_replicas=1, work=2.5, active_models=1), PoolDemand()
    assert sizer.decide(idle, 1, 0.0).desired == 1
    assert sizer.decide(busy, 1, 1.0).desired == 3  # at once
    held = sizer.decide(idle, 3, 2.0)
    assert held.desired == 3 and "held at 3" in held.reason
    assert sizer.decide(idle, 3, 10.9).desired == 3
    assert sizer.decide(idle, 3, 11.5).desired == 1  # the busy round left the window


def test_a_fresh_sizer_does_not_drain_the_running_pool_at_once() -> None:
    sizer = PoolSizer(0, 4, scale_down_stabilization_s=30)
    assert sizer.decide(PoolDemand(), 3, 100.0).desired == 3
    assert sizer.decide(PoolDemand(), 3, 131.0).desired == 0


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="min_workers"):
        PoolSizer(3, 2)
    with pytest.raises(ValueError, match="max_workers"):
        PoolSizer(0, 0)
