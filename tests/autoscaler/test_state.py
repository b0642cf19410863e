"""autoscaler.state, the read API of the autoscaler's state, against a real Redis: it reads what the
autoscaler's own stores write."""

from __future__ import annotations

from typing import Any

from autoscaler import state
from autoscaler.decisions import DecisionStore
from autoscaler.policy import Decision
from schemas import Names


async def test_pins_round_trip(redis_client: Any, names: Names) -> None:
    assert await state.read_pins(redis_client, names) == {}
    await state.pin(redis_client, names, "m1", 3)
    await state.pin(redis_client, names, "m2", 0)
    assert await state.read_pins(redis_client, names) == {"m1": 3, "m2": 0}
    await state.unpin(redis_client, names, "m1")
    assert await state.read_pins(redis_client, names) == {"m2": 0}


async def test_nothing_reported_reads_as_empty(redis_client: Any, names: Names) -> None:
    assert await state.read_gpus(redis_client, names) == []
    assert await state.read_leader(redis_client, names) is None
    assert await state.read_decisions(redis_client, names, ["m1"]) == {}
    assert await state.read_placements(redis_client, names, ["m1"]) == {}
    assert await state.read_placements(redis_client, names, []) == {}


async def test_decisions_read_what_the_autoscaler_published(redis_client: Any, names: Names) -> None:
    decision = Decision(model="m1", current=1, desired=2, reason="lag 40 > 10", inputs={})
    await DecisionStore(redis_client, names).publish([decision], at_ms=1_000.0)
    records = await state.read_decisions(redis_client, names, ["m1", "m2"])
    assert list(records) == ["m1"]
    assert (records["m1"].desired, records["m1"].actual, records["m1"].reason) == (2, 1, "lag 40 > 10")


async def test_placements_and_unserved_states(redis_client: Any, names: Names) -> None:
    await redis_client.hset(names.placement_key("m1"), mapping={"state": "schedule_failed", "reason": "no room"})
    placements = await state.read_placements(redis_client, names, ["m1", "m2"])
    assert placements == {"m1": {"state": "schedule_failed", "reason": "no room"}}
    assert placements["m1"]["state"] in state.UNSERVED_PLACEMENTS
    assert state.PlacementState.PLACED.value not in state.UNSERVED_PLACEMENTS
