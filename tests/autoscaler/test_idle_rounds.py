"""An idle autoscaler's remaining per-round work, counted rather than timed.

* Placement: a round whose inputs did not change keeps the last outcome without running the rules (it still
  stamps the round), and each kind of input change, a forced round (a worker joined) and the safety-net period
  place again; the per-model decisions' measured work reaches the rules through the backend.
* Lag probe: a quiet partition of a model that has workers is probed every ``quiet_probe_rounds`` rounds, a share
  of them each round; a model at zero is probed every round, so its first request is seen at once; a record on a
  partition probed less often is seen within that many rounds and its rate is reckoned since its last probe.
* The control loop hands the collector the models that had workers last round.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from autoscaler import Autoscaler, AutoscalerSettings, LagCollector, ModelLoad, PartitionLoad, ServiceStats
from autoscaler.backends import PlacementBackend
from autoscaler.placement import MB
from autoscaler.placement_store import PlacementRunner
from autoscaler.policy import Decision
from autoscaler.signals import ewma
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, ModelRegistry, Names, now_ms
from schemas.residency import ResidentModel, WorkerResidency


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _register(redis: Any, names: Names, tmp_path: Path, models: Sequence[str]) -> None:
    registry = ModelRegistry(redis, names)
    artifact = tiny_mlp(tmp_path / "m.onnx")
    for model in models:
        await registry.register(build_record(model, "1", artifact))


async def _beat(redis: Any, names: Names, worker: str, resident: Sequence[str] = ()) -> None:
    """A following worker's heartbeat and residency (a fresh ``ts_ms`` each time, as every beat writes)."""
    await redis.hset(names.worker_key(worker), mapping={"ts_ms": str(now_ms()), "state": "ready", "follows": "1"})
    await redis.zadd(names.workers_key, {worker: now_ms()})
    models = tuple(ResidentModel(m, "1", MB, 0.0, now_ms()) for m in resident)
    state = WorkerResidency(worker, None, None, len(models) * MB, models, now_ms())
    await redis.set(names.residency_key(worker), state.to_bytes())


@pytest.mark.integration
async def test_a_placement_round_with_unchanged_inputs_keeps_the_outcome(
    redis_client: Any, names: Names, tmp_path: Path
) -> None:
    models = [f"m{i}" for i in range(6)]
    await _register(redis_client, names, tmp_path, models)
    await _beat(redis_client, names, "w1")
    clock = Clock()
    runner = PlacementRunner(redis_client, names, full_round_s=30.0, clock=clock)
    first = await runner.run(models, {})
    assert runner.placed_rounds == 1 and set(first.status) == set(models)

    async def rounds(n: int = 1, **kwargs: Any) -> tuple[int, int]:
        before = (runner.placed_rounds, runner.kept_rounds)
        for _ in range(n):
            clock.t += 1.0
            await _beat(redis_client, names, "w1", resident)  # new heartbeat and residency stamps: no change
            await runner.run(models, desired, **kwargs)
        return runner.placed_rounds - before[0], runner.kept_rounds - before[1]

    resident: list[str] = []
    desired: dict[str, int] = {}
    stamp = int(await redis_client.get(names.placement_round_key))
    # The first round's assignment read back places once more; then nothing changed: the rules did not run.
    assert await rounds(6) == (1, 5)
    assert int(await redis_client.get(names.placement_round_key)) >= stamp  # each kept round confirmed it

    resident = ["m1"]  # a worker's resident models
    assert await rounds(2) == (1, 1)
    desired = {"m2": 0}  # a decision's target; the round after it reads the changed assignment back, places again
    assert await rounds(3) == (2, 1)
    assert (await runner.run(models, desired, work={"m3": 0.5})).status  # measured work
    assert await rounds(1, work={"m3": 0.5}) == (0, 1)
    assert await rounds(1, work={"m3": 0.501}) == (0, 1)  # counted to two decimals
    assert await rounds(1, force=True) == (1, 0)  # a worker joined
    await _register(redis_client, names, tmp_path, ["extra"])  # the registry moved (another model)
    assert await rounds(2) == (1, 1)
    await _beat(redis_client, names, "w2")  # another worker: it gets its share
    assert await rounds(3) == (2, 1)
    assert await redis_client.scard(names.assignment_key("w2")) == 2
    await redis_client.delete(names.assignment_key("w2"))  # an assignment changed behind its back
    assert await rounds(3) == (2, 1)
    assert await redis_client.scard(names.assignment_key("w2")) == 2
    clock.t += 30.0  # the safety net: placed at least every full_round_s
    assert await rounds(1) == (1, 0)
    assert await rounds(3) == (0, 3)


@pytest.mark.integration
async def test_the_decisions_measured_work_weighs_the_placement(
    fleet_settings: FleetSettings, redis_client: Any, names: Names, tmp_path: Path
) -> None:
    """w1 holds m0..m3 and w2 joins. Each replica weighing 1, the loads 4:0 even out with one move (3:1 is within
    the margin of 2); with m0 measured at 4 workers of work (weight 5), 8:0 takes three moves of idle models and
    m0 stays."""
    models = [f"m{i}" for i in range(4)]
    await _register(redis_client, names, tmp_path, models)
    backend = PlacementBackend(fleet_settings)
    await backend.start()
    try:
        await _beat(redis_client, names, "w1")
        await backend.place(models)
        await _beat(redis_client, names, "w2")
        busy = {"m0": Decision("m0", 1, 1, "", {"raw_replicas": 4.0}), "m1": Decision("m1", 1, 1, "", {})}
        moved = await backend.place(models, decisions=busy)
        assert len(moved.moves) == 3 and "m0" not in {m for m, _, _ in moved.moves}
    finally:
        await backend.stop()


def test_a_decisions_work_is_its_raw_recommendation_or_for_a_pin_its_arrivals() -> None:
    assert Decision("m", 1, 2, "", {"raw_replicas": 1.5}).work == 1.5
    pinned = Decision("m", 2, 2, "", {"arrival_rate": 30.0, "per_replica_throughput": 20.0}, pinned=True)
    assert pinned.work == 1.5
    assert Decision("m", 0, 0, "", {}).work == 0.0


@pytest.fixture
async def two_models(fleet_settings: FleetSettings, names: Names) -> AsyncIterator[dict[str, str]]:
    """Request topics of ``served`` and ``cold``, 3 partitions each."""
    topics = {m: names.request_topic(m) for m in ("served", "cold")}
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 3, 1) for t in topics.values()])
        yield topics
        await admin.delete_topics(list(topics.values()))
    finally:
        await admin.close()


@pytest.mark.integration
async def test_quiet_partitions_of_served_models_are_probed_every_kth_round(
    fleet_settings: FleetSettings, two_models: dict[str, str]
) -> None:
    clock, half_life = Clock(), 5.0
    producer = AIOKafkaProducer(**fleet_settings.kafka.producer_kwargs())
    await producer.start()
    models = ["served", "cold"]
    try:
        async with LagCollector(fleet_settings, half_life_s=half_life, quiet_probe_rounds=3, clock=clock) as c:
            c.relax({"served"})

            async def step() -> dict[str, ModelLoad]:
                clock.t += 1.0
                return await c.collect(models)

            await step()
            await step()  # rates known (zero) from the second sample: quiet
            probed = []
            for _ in range(3):
                await step()
                probed.append(c.last_round.partitions)
            assert probed == [4, 4, 4]  # cold's 3 every round, one of served's 3 in turn (6 without relax)

            # A first request of the model at zero is seen the next round.
            await (await producer.send(two_models["cold"], b"x", partition=1))
            assert (await step())["cold"].lag == 1

            # Records on the served model's quiet partitions: each seen within 3 rounds, its rate reckoned over
            # the 3 s since that partition's last probe (not over the last round's 1 s).
            for p in range(3):
                await (await producer.send(two_models["served"], b"x" * 8, partition=p))
            rates: dict[int, float] = {}
            for _ in range(3):
                load = (await step())["served"]
                for part in load.partitions:
                    if part.log_end and part.partition not in rates:
                        rates[part.partition] = part.arrival_rate
            assert sorted(rates) == [0, 1, 2]
            assert all(math.isclose(r, ewma(0.0, 1 / 3.0, 3.0, half_life)) for r in rates.values()), rates
            await step()
            assert c.last_round.partitions == 6  # partitions with lag are probed every round
    finally:
        await producer.stop()


class _Loads:
    def __init__(self) -> None:
        self.relaxed: list[frozenset[str]] = []

    def relax(self, models: frozenset[str]) -> None:
        self.relaxed.append(frozenset(models))

    async def collect(self, models: Sequence[str]) -> dict[str, ModelLoad]:
        parts = (PartitionLoad(0, 0, 0, 0, rates_known=True),)
        return {m: ModelLoad(m, f"t.{m}", f"g.{m}", parts, at=0.0, rates_known=True) for m in models}


class _Backend:
    def __init__(self, **counts: int) -> None:
        self.counts = counts

    async def replicas(self, model: str) -> int:
        return self.counts.get(model, 0)

    async def scale(self, model: str, replicas: int) -> None:
        self.counts[model] = replicas


class _NoStats:
    async def read(self, model: str) -> ServiceStats:
        return ServiceStats()


async def test_the_control_loop_relaxes_only_models_that_had_workers() -> None:
    loads, backend = _Loads(), _Backend(a=1, b=0, c=2)
    settings = AutoscalerSettings(models=("a", "b", "c"), min_replicas=0, idle_to_zero_s=3600.0)
    scaler = Autoscaler(settings, backend, loads, _NoStats())
    await scaler.step()
    backend.counts["a"] = 0  # a's workers went
    await scaler.step()
    await scaler.step()
    assert loads.relaxed == [frozenset(), frozenset({"a", "c"}), frozenset({"c"})]
