"""The last decision per model in Redis: round trip, recorded by the control loop, failures not fatal."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler import Autoscaler, AutoscalerSettings, Decision, DecisionRecord, DecisionStore, StatsError
from schemas import Names

from .test_controller import Clock, FixedLoads, MemoryBackend, NoStats


def test_record_fields_round_trip() -> None:
    decision = Decision("m", 1, 3, "lag 250 -> 3", {"lag": 250, "arrival_rate": 1.5, "gpu_utilization": None}, True)
    record = DecisionRecord.from_decision(decision, 1234.0)
    raw = {k.encode(): v.encode() for k, v in record.to_fields().items()}
    assert DecisionRecord.from_fields("m", raw) == record
    assert record.direction == "up" and record.actual == 1 and record.capped_by_partitions and not record.pinned
    assert DecisionRecord.from_fields("m", {}) is None
    assert DecisionRecord.from_fields("m", {b"desired": b"x", b"actual": b"1", b"ts_ms": b"1"}) is None


async def test_control_loop_records_decisions(redis_client: Any, names: Names) -> None:
    store = DecisionStore(redis_client, names, ttl_s=30)
    backend, loads = MemoryBackend(), FixedLoads({"a": 250, "b": 0})
    settings = AutoscalerSettings(models=("a", "b"), default_replica_throughput=10.0)
    await Autoscaler(settings, backend, loads, NoStats(), sink=store, clock=Clock()).step()
    records = await store.read(["a", "b", "unknown"])
    assert sorted(records) == ["a", "b"]
    a = records["a"]
    assert (a.desired, a.actual, a.direction) == (3, 0, "up") and a.inputs["lag"] == 250 and "lag 250" in a.reason
    # The round stamp carries the TTL: once a stopped autoscaler's stamp is gone, no decision is current.
    assert 0 < await redis_client.ttl(names.decision_round_key) <= 30
    await redis_client.delete(names.decision_round_key)
    assert await store.read(["a", "b"]) == {}


class BrokenSink:
    async def publish(self, decisions: Any) -> None:
        raise StatsError("redis down")


async def test_sink_failure_does_not_stop_scaling(caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend()
    settings = AutoscalerSettings(models=("a",), default_replica_throughput=10.0)
    scaler = Autoscaler(settings, backend, FixedLoads({"a": 250}), NoStats(), sink=BrokenSink(), clock=Clock())
    assert [d.desired for d in await scaler.step()] == [3]
    assert backend.counts == {"a": 3} and "decisions not recorded: redis down" in caplog.text
