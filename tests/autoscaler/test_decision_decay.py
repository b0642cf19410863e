"""After its traffic ends, a model's smoothed rates decay toward zero for an hour without reaching it: its stored
decision is rewritten while the rates change to two significant digits (about a minute), not every round."""

from __future__ import annotations

from typing import Any

from autoscaler import AutoscalerSettings, DecisionStore
from autoscaler.policy import ScalingPolicy
from autoscaler.signals import ModelLoad, PartitionLoad, ServiceStats, ewma
from schemas import Names

HALF_LIFE_S = 5.0


def _load(arrival: float, completion: float, now: float) -> ModelLoad:
    part = PartitionLoad(0, 1000, 1000, 0, arrival, completion, rates_known=True)
    return ModelLoad("m", "t", "g", (part,), now, rates_known=True)


async def _writes(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hset", {}).get("calls", 0))


async def test_decaying_rates_stop_rewriting_the_decision(redis_client: Any, names: Names) -> None:
    policy = ScalingPolicy(AutoscalerSettings(models=("m",), min_replicas=1))
    store = DecisionStore(redis_client, names, ttl_s=30)
    stats = ServiceStats(replicas_reporting=1, per_replica_throughput=100.0)
    arrival = completion = 40.0  # req/s when the traffic stopped
    writes: list[int] = []
    for second in range(200):  # one-second rounds after the last request
        decision = policy.decide("m", _load(arrival, completion, float(second)), stats, 1, float(second))
        before = await _writes(redis_client)
        await store.publish([decision], at_ms=1_000_000 + 1000 * second)
        if await _writes(redis_client) > before:
            writes.append(second)
        arrival = ewma(arrival, 0.0, 1.0, HALF_LIFE_S)
        completion = ewma(completion, 0.0, 1.0, HALF_LIFE_S)
    assert arrival > 0  # never zero, as the collector's rates
    # Written while the rates fell from 40/s to 0.01/s (about 60 s at a 5 s half-life), then never again.
    assert writes and writes[-1] <= 70, writes
    assert len(writes) <= 70, writes
