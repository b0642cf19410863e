"""The control loop with an in-memory backend (and once with the real collector and broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from autoscaler import (
    Autoscaler,
    AutoscalerSettings,
    CollectorError,
    LagCollector,
    ModelLoad,
    PartitionLoad,
    PinStore,
    ServiceStats,
    ServiceStatsReader,
    publish_service_stats,
)
from schemas import FleetSettings, Names


class MemoryBackend:
    """Workers as a dict; records every scale call."""

    def __init__(self, **replicas: int) -> None:
        self.counts: dict[str, int] = dict(replicas)
        self.calls: list[tuple[str, int]] = []
        self.fail = False

    async def replicas(self, model: str) -> int:
        return self.counts.get(model, 0)

    async def scale(self, model: str, replicas: int) -> None:
        if self.fail:
            raise OSError("backend down")
        self.calls.append((model, replicas))
        self.counts[model] = replicas


class FixedLoads:
    def __init__(self, lags: dict[str, int], partitions: int = 4) -> None:
        self.lags = lags
        self.partitions = partitions
        self.error: Exception | None = None

    async def collect(self, models: Sequence[str]) -> dict[str, ModelLoad]:
        if self.error is not None:
            raise self.error
        return {
            m: ModelLoad(
                m,
                f"t.{m}",
                f"g.{m}",
                tuple(
                    PartitionLoad(i, 1000 if i == 0 else 0, None, self.lags.get(m, 0) if i == 0 else 0)
                    for i in range(self.partitions)
                ),
                at=0.0,
            )
            for m in models
        }


class NoStats:
    async def read(self, model: str) -> ServiceStats:
        return ServiceStats()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(backend: MemoryBackend, loads: FixedLoads, clock: Clock, **overrides: Any) -> Autoscaler:
    s = AutoscalerSettings(**{"models": ("a", "b"), "default_replica_throughput": 10.0, **overrides})
    return Autoscaler(s, backend, loads, NoStats(), clock=clock)


async def test_step_scales_up_and_caps() -> None:
    backend, loads, clock = MemoryBackend(), FixedLoads({"a": 250, "b": 0}), Clock()
    scaler = make(backend, loads, clock)
    decisions = await scaler.step()
    assert [(d.model, d.desired) for d in decisions] == [("a", 3), ("b", 0)]
    assert backend.calls == [("a", 3)]
    loads.lags["a"] = 10_000
    await scaler.step()
    assert backend.counts["a"] == 4 and scaler.decisions["a"].capped_by_partitions
    assert 'fleet_autoscaler_replicas_desired{model="a"} 4.0' in scaler.metrics.render().decode()


async def test_scale_down_waits_then_zero() -> None:
    backend, loads, clock = MemoryBackend(), FixedLoads({"a": 250}), Clock()
    scaler = make(backend, loads, clock, models=("a",), scale_down_stabilization_s=30.0, idle_to_zero_s=60.0)
    await scaler.step()
    loads.lags["a"] = 0
    for t, expected in ((10, 3), (31, 1), (59, 1), (60, 0)):
        clock.t = t
        await scaler.step()
        assert backend.counts["a"] == expected, (t, scaler.decisions["a"].why())


async def test_pins_win(redis_client: Any, names: Names) -> None:
    backend, loads, clock = MemoryBackend(a=1), FixedLoads({"a": 250, "b": 250}), Clock()
    s = AutoscalerSettings(models=("a", "b"), pinned=("a=2", "b=1"))
    store = PinStore(redis_client, names)
    await store.pin("b", 4)
    scaler = Autoscaler(s, backend, loads, NoStats(), pins=store, clock=clock)
    await scaler.step()
    assert backend.counts == {"a": 2, "b": 4}
    assert all(d.pinned for d in scaler.decisions.values())


async def test_per_model_caps_limit_scaling() -> None:
    backend, loads, clock = MemoryBackend(), FixedLoads({"a": 10_000, "b": 10_000}), Clock()

    async def caps(models: Sequence[str]) -> Mapping[str, int]:
        return {"a": 1}

    s = AutoscalerSettings(models=("a", "b"), default_replica_throughput=10.0)
    scaler = Autoscaler(s, backend, loads, NoStats(), limits=caps, clock=clock)
    await scaler.step()
    assert backend.counts == {"a": 1, "b": 4}


async def test_failures_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    backend, loads, clock = MemoryBackend(), FixedLoads({"a": 250}), Clock()
    scaler = make(backend, loads, clock)
    loads.error = CollectorError("test")
    assert await scaler.step() == []
    loads.error = None
    backend.fail = True
    assert [d.model for d in await scaler.step()] == ["b"]
    assert "backend down" in caplog.text
    assert 'fleet_autoscaler_errors_total{code="BACKEND_FAILED",model="a"} 1.0' in scaler.metrics.render().decode()


async def test_loop_runs_and_stops() -> None:
    backend, loads = MemoryBackend(), FixedLoads({"a": 250})
    scaler = Autoscaler(AutoscalerSettings(models=("a",), interval_s=0.01), backend, loads, NoStats())
    async with scaler:
        for _ in range(200):
            if backend.calls:
                break
            await asyncio.sleep(0.01)
    assert backend.calls and backend.calls[0][0] == "a"
    with pytest.raises(RuntimeError):
        await scaler.start()


async def test_end_to_end_with_real_collector(fleet_settings: FleetSettings, names: Names, redis_client: Any) -> None:
    """Records waiting with no workers wake the model from zero, sized by measured throughput."""
    topic = names.request_topic("e2e")
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    producer = AIOKafkaProducer(**fleet_settings.kafka.producer_kwargs())
    await producer.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
        for i in range(60):
            await producer.send(topic, b"r", partition=i % 3)
        await producer.flush()
        await publish_service_stats(redis_client, names, "e2e", "w1", 0.5, 1.0, 10)  # 2 req/s per worker
        settings = AutoscalerSettings(models=("e2e",), target_drain_s=10.0, fleet=fleet_settings)
        backend = MemoryBackend()
        async with LagCollector(fleet_settings) as collector:
            scaler = Autoscaler(settings, backend, collector, ServiceStatsReader(redis_client, names))
            (decision,) = await scaler.step()
        # 60 / (2/s x 10 s) = 3 workers, which is also the partition count
        assert backend.calls == [("e2e", 3)]
        assert decision.inputs["lag"] == 60 and decision.inputs["throughput_measured"] is True
        assert "activation" in decision.reason
    finally:
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()
