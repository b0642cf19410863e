"""`DecisionStore` writes only decisions that changed; reads bring an idle model's idle time up to date."""

from __future__ import annotations

from typing import Any

from autoscaler import DecisionStore
from autoscaler.policy import Decision
from schemas import Names


def _idle(model: str, idle_for_s: float, desired: int = 0, current: int = 0) -> Decision:
    inputs: dict[str, Any] = {"lag": 0, "arrival_rate": 0.0, "idle_for_s": idle_for_s, "current": current}
    reason = f"lag 0 -> 0; idle for {idle_for_s:.1f}s < idle_to_zero_s 300s: keep 1"
    return Decision(model, current, desired, reason, inputs)


async def _writes(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("hset", "del"))


async def test_unchanged_decisions_are_not_written_again(redis_client: Any, names: Names) -> None:
    store = DecisionStore(redis_client, names, ttl_s=30)
    models = [f"m{i}" for i in range(20)]
    await store.publish([_idle(m, 1.0, 1, 1) for m in models], at_ms=1_000_000)
    before = await _writes(redis_client)
    # Ten more rounds where only the idle time grows: nothing is rewritten, the round is stamped.
    for i in range(2, 12):
        await store.publish([_idle(m, float(i), 1, 1) for m in models], at_ms=1_000_000 + 1000 * (i - 1))
    assert await _writes(redis_client) == before
    assert await redis_client.get(names.decision_round_key) == b"1010000"
    record = (await store.read(["m3"]))["m3"]
    # Stored at idle 1.0 s and ts 1 000 000; the round at 1 010 000 saw it idle 10 s longer.
    assert record.ts_ms == 1_010_000
    assert record.inputs["idle_for_s"] == 11.0
    assert "idle for 11.0s" in record.reason

    # A real change is written, and only that one.
    await store.publish([_idle(m, 12.0, 2 if m == "m3" else 1, 1) for m in models], at_ms=1_011_000)
    assert await _writes(redis_client) == before + 2  # DEL + HSET of m3
    assert (await store.read(["m3"]))["m3"].desired == 2


async def test_a_model_that_becomes_active_is_written(redis_client: Any, names: Names) -> None:
    store = DecisionStore(redis_client, names, ttl_s=30)
    await store.publish([_idle("m", 5.0, 1, 1)], at_ms=1_000_000)
    await store.publish([_idle("m", 0.0, 1, 1)], at_ms=1_001_000)  # idle time reset: it was active
    record = (await store.read(["m"]))["m"]
    assert record.inputs["idle_for_s"] == 0.0 and record.ts_ms == 1_001_000
