"""Table-driven tests of the pure scaling policy (no broker, no clock)."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler import AutoscalerSettings, Direction, ModelLoad, PartitionLoad, ScalingPolicy, ServiceStats


def make_load(lag: int = 0, arrival: float = 0.0, partitions: int = 8, log_end: int = 1000) -> ModelLoad:
    """A model load with all lag, arrivals and records on partition 0."""
    parts = tuple(
        PartitionLoad(
            partition=i,
            log_end=log_end if i == 0 else 0,
            committed=log_end - lag if i == 0 else None,
            lag=lag if i == 0 else 0,
            arrival_rate=arrival if i == 0 else 0.0,
        )
        for i in range(partitions)
    )
    return ModelLoad(model="m", topic="t", group="g", partitions=parts, at=0.0, rates_known=True)


def settings(**overrides: Any) -> AutoscalerSettings:
    base: dict[str, Any] = dict(
        default_replica_throughput=20.0, target_drain_s=10.0, min_replicas=0, max_replicas=16, idle_to_zero_s=60.0
    )
    base.update(overrides)
    return AutoscalerSettings(**base)


# (id, settings overrides, load kwargs, stats kwargs, current, pinned, expected desired, capped, reason fragment)
SINGLE = [
    ("idle at zero stays", {}, {}, {}, 0, None, 0, False, "= 0.00 -> 0"),
    ("backlog drains in target", {}, {"lag": 400}, {}, 1, None, 2, False, "lag 400"),
    ("arrivals only", {}, {"arrival": 50.0}, {}, 1, None, 3, False, "arrival 50"),
    (
        "measured throughput wins",
        {},
        {"lag": 400, "arrival": 50.0},
        {"per_replica_throughput": 100.0},
        1,
        None,
        1,
        False,
        "/ (100/s x 10s)",
    ),
    ("partition cap binds", {}, {"lag": 10_000}, {}, 1, None, 8, True, "capped at the topic's 8 partitions"),
    ("max below partitions", {"max_replicas": 4}, {"lag": 10_000}, {}, 1, None, 4, False, "max_replicas 4"),
    ("min above partitions is capped", {"min_replicas": 10}, {}, {}, 0, None, 8, True, "min_replicas 10"),
    ("activation from zero", {}, {"lag": 1}, {}, 0, None, 1, False, "activation: lag 1"),
    ("activation uses formula", {}, {"lag": 1000}, {}, 0, None, 5, False, "activation"),
    ("below activation stays zero", {"activation_lag": 10}, {"lag": 5}, {}, 0, None, 0, False, "stays at zero"),
    ("min replicas from zero", {"min_replicas": 2}, {}, {}, 0, None, 2, False, "min_replicas 2"),
    ("fresh policy holds scale-down", {}, {}, {}, 3, None, 3, False, "scale-down held at 3"),
    (
        "latency trigger proportional",
        {"latency_p95_target_ms": 100.0},
        {"arrival": 10.0},
        {"p95_latency_ms": 300.0},
        2,
        None,
        6,
        False,
        "p95 300ms > target 100ms",
    ),
    (
        "latency under target",
        {"latency_p95_target_ms": 100.0},
        {"arrival": 10.0},
        {"p95_latency_ms": 90.0},
        1,
        None,
        1,
        False,
        "-> 1",
    ),
    (
        "gpu trigger",
        {"gpu_util_target": 60.0},
        {"arrival": 10.0},
        {"gpu_utilization": 90.0},
        2,
        None,
        3,
        False,
        "GPU utilization 90%",
    ),
    ("gpu off by default", {}, {"arrival": 10.0}, {"gpu_utilization": 99.0}, 1, None, 1, False, "-> 1"),
    (
        "queue depth trigger",
        {"queue_depth_target": 10},
        {"arrival": 10.0},
        {"queue_depth": 25},
        1,
        None,
        3,
        False,
        "25 requests queued",
    ),
    ("pinned wins", {}, {"lag": 10_000}, {}, 2, 5, 5, False, "pinned to 5 by operator"),
    ("pinned beyond partitions says so", {}, {}, {}, 2, 12, 12, False, "4 worker(s) will sit idle"),
    ("pinned to zero", {}, {"lag": 50}, {}, 3, 0, 0, False, "pinned to 0"),
    ("exact multiple is not rounded up", {}, {"arrival": 40.0}, {}, 2, None, 2, False, "= 2.00 -> 2"),
]


@pytest.mark.parametrize(
    "overrides,load_kw,stats_kw,current,pinned,expected,capped,fragment",
    [case[1:] for case in SINGLE],
    ids=[case[0] for case in SINGLE],
)
def test_single_decision(
    overrides: dict[str, Any],
    load_kw: dict[str, Any],
    stats_kw: dict[str, Any],
    current: int,
    pinned: int | None,
    expected: int,
    capped: bool,
    fragment: str,
) -> None:
    policy = ScalingPolicy(settings(**overrides))
    decision = policy.decide("m", make_load(**load_kw), ServiceStats(**stats_kw), current, now=100.0, pinned=pinned)
    assert decision.desired == expected, decision.why()
    assert decision.capped_by_partitions is capped
    assert fragment in decision.reason, decision.reason
    assert decision.pinned is (pinned is not None)
    assert decision.inputs["lag"] == load_kw.get("lag", 0)
    assert decision.inputs["current"] == current
    assert decision.model in decision.why() and f"lag={decision.inputs['lag']}" in decision.why()


# Sequences: (t, lag, arrival, log_end, current) -> expected desired, on one policy instance.
Step = tuple[float, int, float, int, int, int]

SEQUENCES: dict[str, tuple[dict[str, Any], list[Step]]] = {
    "scale up at once, down after the window": (
        {"scale_down_stabilization_s": 30.0},
        [
            (0, 2000, 0.0, 2000, 1, 8),  # 10 wanted, 8 partitions
            (10, 0, 20.0, 2100, 8, 8),  # 1 wanted, held by the t=0 recommendation
            (29, 0, 20.0, 2200, 8, 8),
            (31, 0, 20.0, 2300, 8, 1),  # t=0 left the window
        ],
    ),
    "down to the highest recent recommendation": (
        {"scale_down_stabilization_s": 30.0},
        [
            (0, 1000, 0.0, 1000, 5, 5),
            (20, 400, 0.0, 1000, 5, 5),  # 2 wanted, held at 5
            (31, 400, 0.0, 1000, 5, 2),  # t=0 (5) out; t=20 (2) and t=31 (2) remain
        ],
    ),
    "idle to zero after the idle period": (
        {"scale_down_stabilization_s": 30.0, "idle_to_zero_s": 60.0},
        [
            (0, 0, 0.0, 100, 2, 2),  # seeded window holds 2
            (31, 0, 0.0, 100, 2, 1),  # keep one worker while not idle long enough
            (59, 0, 0.0, 100, 1, 1),
            (60, 0, 0.0, 100, 1, 0),
            (61, 0, 0.0, 100, 0, 0),
        ],
    ),
    "arrivals reset the idle clock": (
        {"scale_down_stabilization_s": 0.0, "idle_to_zero_s": 60.0},
        [
            (0, 0, 0.0, 100, 1, 1),
            (50, 0, 0.0, 105, 1, 1),  # records arrived (and were done): active
            (100, 0, 0.0, 105, 1, 1),  # idle 50 s only
            (110, 0, 0.0, 105, 1, 0),
        ],
    ),
    "activation after zero": (
        {"activation_lag": 3},
        [
            (0, 0, 0.0, 0, 0, 0),
            (1, 2, 0.0, 2, 0, 0),
            (2, 3, 0.0, 3, 0, 1),
        ],
    ),
    "scale-up window takes the lowest": (
        {"scale_up_stabilization_s": 5.0, "scale_down_stabilization_s": 0.0},
        [
            (0, 0, 10.0, 10, 1, 1),
            (1, 0, 100.0, 20, 1, 1),  # 5 wanted, the t=0 recommendation (1) is in the window
            (6, 0, 100.0, 30, 1, 5),
        ],
    ),
}


@pytest.mark.parametrize("overrides,steps", SEQUENCES.values(), ids=SEQUENCES.keys())
def test_sequence(overrides: dict[str, Any], steps: list[Step]) -> None:
    policy = ScalingPolicy(settings(**overrides))
    for t, lag, arrival, log_end, current, expected in steps:
        decision = policy.decide("m", make_load(lag, arrival, log_end=log_end), ServiceStats(), current, now=t)
        assert decision.desired == expected, f"t={t}: {decision.why()}"


def test_direction_and_forget() -> None:
    policy = ScalingPolicy(settings(scale_down_stabilization_s=30.0))
    up = policy.decide("m", make_load(lag=1000), ServiceStats(), 1, now=0.0)
    assert up.direction is Direction.UP
    held = policy.decide("m", make_load(), ServiceStats(), 5, now=1.0)
    assert held.direction is Direction.NONE and "held" in held.reason
    policy.forget("m")
    fresh = policy.decide("m", make_load(), ServiceStats(), 5, now=2.0)
    assert fresh.desired == 5  # a forgotten model starts with a fresh, seeded window


def test_models_are_independent() -> None:
    policy = ScalingPolicy(settings())
    policy.decide("a", make_load(lag=1000), ServiceStats(), 1, now=0.0)
    b = policy.decide("b", make_load(), ServiceStats(), 0, now=0.0)
    assert b.desired == 0


def test_a_models_max_replicas_label_caps_desired() -> None:
    policy = ScalingPolicy(settings())
    decision = policy.decide("m", make_load(lag=10_000), ServiceStats(), 1, 0.0, max_replicas=2)
    assert decision.desired == 2 and "limited to the model's max_replicas label 2" in decision.reason
    uncapped = ScalingPolicy(settings()).decide("m", make_load(lag=10_000), ServiceStats(), 1, 0.0, max_replicas=20)
    assert uncapped.desired == 8 and uncapped.capped_by_partitions
