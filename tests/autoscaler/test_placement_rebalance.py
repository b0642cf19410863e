"""Rebalancing (`autoscaler.placement`, rule 3): a worker that joins a placed fleet gets its share, a bounded
number of moves a round, idle and cold models first, and a balanced placement never moves (pure logic); and
the placement runner doing so against real Redis, reading the workers' residency."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from autoscaler.placement import (
    MB,
    ModelDemand,
    Placement,
    PlacementState,
    WorkerSlot,
    place,
    rebalance_margin,
    worker_loads,
)
from autoscaler.placement_store import PlacementRunner, read_placement
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import ModelRegistry, Names, now_ms
from schemas.residency import ResidentModel, WorkerResidency


def _d(model: str, replicas: int = 1, *, work: float = 0.0, mb: int = 10, requires: str = "") -> ModelDemand:
    return ModelDemand(model, mb * MB, replicas, frozenset(filter(None, requires.split(","))), work=work)


def _w(
    worker: str, mb: int | None = None, *, labels: str = "cpu", last_used: dict[str, float] | None = None
) -> WorkerSlot:
    used = last_used or {}
    return WorkerSlot(
        worker, None if mb is None else mb * MB, frozenset(labels.split(",")), frozenset(used), dict(used)
    )


def _models(n: int) -> list[ModelDemand]:
    return [_d(f"m{i:03d}") for i in range(n)]


def _rounds(
    demands: list[ModelDemand], workers: list[WorkerSlot], current: dict[str, set[str]], max_moves: int
) -> tuple[list[Placement], dict[str, set[str]]]:
    """Placement rounds, each from the last one's assignment, until one moves nothing (at most 100)."""
    rounds: list[Placement] = []
    for _ in range(100):
        out = place(demands, workers, current, max_moves=max_moves)
        rounds.append(out)
        current = out.assignments
        if not out.moves:
            return rounds, current
    raise AssertionError("placement never settled")


def test_a_worker_joining_a_placed_fleet_gets_its_share_a_bounded_number_a_round() -> None:
    demands = _models(100)
    alone = place(demands, [_w("w1")], {}, max_moves=10)
    assert len(alone.assignments["w1"]) == 100 and not alone.moves
    rounds, settled = _rounds(demands, [_w("w1"), _w("w2")], alone.assignments, max_moves=10)
    assert all(len(r.moves) <= 10 for r in rounds)
    assert [len(r.moves) for r in rounds[:4]] == [10, 10, 10, 10]
    assert all((source, target) == ("w1", "w2") for r in rounds for _, source, target in r.moves)
    sizes = sorted(len(models) for models in settled.values())
    assert sizes[1] - sizes[0] <= rebalance_margin([50, 50])
    assert sum(sizes) == 100
    last = rounds[-2]  # the statuses follow the moves
    moved = last.moves[0][0]
    assert last.status[moved].workers == ("w2",) and last.status[moved].state is PlacementState.PLACED


def test_new_models_go_to_the_least_loaded_worker_when_room_does_not_decide() -> None:
    out = place(_models(9), [_w("w1"), _w("w2"), _w("w3")], {"w1": {"m000", "m001", "m002"}}, max_moves=25)
    assert sorted(len(models) for models in out.assignments.values()) == [3, 3, 3]
    assert out.moves == [] and out.assignments["w1"] == {"m000", "m001", "m002"}


@pytest.mark.parametrize(
    ("split", "why"),
    [
        ((50, 50), "even"),
        ((52, 48), "within 10% of the mean"),
        ((3, 1), "within the minimum margin"),
        ((34, 33, 33), "three workers, even"),
    ],
)
def test_a_balanced_placement_does_not_move(split: tuple[int, ...], why: str) -> None:
    demands = _models(sum(split))
    current: dict[str, set[str]] = {}
    names = iter(d.model for d in demands)
    for i, n in enumerate(split):
        current[f"w{i}"] = {next(names) for _ in range(n)}
    out = place(demands, [_w(w) for w in current], current, max_moves=25)
    assert out.moves == [], why
    assert out.assignments == current


def test_the_balanced_end_of_a_rebalance_stays_put() -> None:
    rounds, settled = _rounds(_models(60), [_w("a"), _w("b"), _w("c")], {"a": {f"m{i:03d}" for i in range(60)}}, 7)
    again = place(_models(60), [_w("a"), _w("b"), _w("c")], settled, max_moves=7)
    assert again.moves == [] and again.assignments == settled
    assert len(rounds) > 2


def test_idle_then_not_resident_then_coldest_models_move_first() -> None:
    demands = [_d("hot", work=0.2), _d("warm"), _d("cold"), _d("unloaded"), _d("x1"), _d("x2"), _d("x3")]
    demands += [_d(f"y{i}") for i in range(3)]
    used = {"hot": 900.0, "warm": 800.0, "cold": 100.0} | dict.fromkeys(("x1", "x2", "x3", "y0"), 500.0)
    source = _w("w1", last_used=used)
    current = {"w1": {d.model for d in demands[:7]}, "w2": {"y0", "y1", "y2"}}
    out = place(demands, [source, _w("w2")], current, max_moves=1)
    assert out.moves == [("unloaded", "w1", "w2")]  # idle and not resident on w1
    current = {"w1": {"hot", "warm", "cold", "x1", "x2", "x3", "y0"}, "w2": {"unloaded", "y1", "y2"}}
    out = place(demands, [source, _w("w2")], current, max_moves=1)
    assert out.moves == [("cold", "w1", "w2")]  # the least recently used of the resident idle ones


def test_a_hot_model_moves_only_when_nothing_else_can() -> None:
    demands = [_d("hot", work=0.5), _d("a"), _d("b"), _d("c"), _d("d")]
    out = place(demands, [_w("w1"), _w("w2")], {"w1": {"hot", "a", "b", "c", "d"}, "w2": set()}, max_moves=10)
    assert "hot" not in {model for model, _, _ in out.moves}
    only_hot = [_d("hot", work=4.0), _d("e")]
    out = place(only_hot, [_w("w1"), _w("w2")], {"w1": {"hot", "e"}, "w2": set()}, max_moves=10)
    assert out.moves == [("e", "w1", "w2")]  # the hot one weighs 5: moving it would only swap the imbalance


def test_measured_work_weighs_on_the_load() -> None:
    demands = [_d("hot", work=6.0)] + [_d(f"i{n}") for n in range(10)]
    current = {"w1": {"hot", "i0"}, "w2": {f"i{n}" for n in range(1, 10)}}
    assert worker_loads(current, {d.model: d for d in demands}) == {"w1": 8.0, "w2": 9.0}
    out = place(demands, [_w("w1"), _w("w2")], current, max_moves=10)
    assert out.moves == []  # 8 against 9: the worker with the hot model holds fewer models, and that is even


def test_replicas_stay_on_distinct_workers() -> None:
    demands = [_d(f"r{i}", replicas=2) for i in range(6)]
    current = {"w1": {f"r{i}" for i in range(6)}, "w2": {f"r{i}" for i in range(6)}, "w3": set()}
    rounds, settled = _rounds(demands, [_w("w1"), _w("w2"), _w("w3")], current, max_moves=25)
    assert sorted(len(m) for m in settled.values()) == [3, 4, 5]  # within the margin of 2
    for model in (d.model for d in demands):
        assert sum(model in m for m in settled.values()) == 2
    assert len(rounds) == 2


def test_labels_and_room_limit_the_moves() -> None:
    demands = [_d(f"g{i}", requires="gpu") for i in range(6)] + [_d("big", mb=500), _d("small")]
    workers = [_w("gpu1", labels="cpu,gpu"), _w("cpu1", 100)]
    out = place(demands, workers, {"gpu1": {d.model for d in demands}, "cpu1": set()}, max_moves=10)
    assert out.moves == [("small", "gpu1", "cpu1")]  # the gpu models need the label, big needs 500 MB


def test_no_moves_unless_asked() -> None:
    out = place(_models(10), [_w("w1"), _w("w2")], {"w1": {f"m{i:03d}" for i in range(10)}})
    assert out.moves == [] and len(out.assignments["w1"]) == 10


@pytest.mark.parametrize("seed", range(8))
def test_rebalancing_settles_the_squared_loads_falling_every_round(seed: int) -> None:
    rng = random.Random(seed)
    demands = [_d(f"m{i:03d}", work=rng.choice([0.0, 0.0, 0.0, 0.3, 1.5])) for i in range(rng.randint(5, 80))]
    by_model = {d.model: d for d in demands}
    workers = [_w(f"w{i}") for i in range(rng.randint(2, 5))]
    current: dict[str, set[str]] = {w.worker: set() for w in workers}
    for demand in demands:
        current[rng.choice(workers[: rng.randint(1, len(workers))]).worker].add(demand.model)
    rounds, settled = _rounds(demands, workers, current, max_moves=rng.randint(1, 10))

    def squares(assignments: dict[str, set[str]]) -> float:
        return sum(load * load for load in worker_loads(assignments, by_model).values())

    before = squares(current)
    for r in rounds[:-1]:
        after = squares(r.assignments)
        assert after < before
        before = after
    loads = worker_loads(settled, by_model)
    heaviest = max(d.weight for d in demands)
    assert max(loads.values()) - min(loads.values()) <= max(rebalance_margin(list(loads.values())), 2 * heaviest)


async def _beat(redis: Any, names: Names, worker: str, resident: dict[str, float]) -> None:
    """Publish what a following worker publishes: its heartbeat and its residency (unlimited room)."""
    await redis.hset(names.worker_key(worker), mapping={"ts_ms": str(now_ms()), "state": "ready", "follows": "1"})
    await redis.zadd(names.workers_key, {worker: now_ms()})
    models = tuple(ResidentModel(m, "1", MB, 0.0, used) for m, used in resident.items())
    state = WorkerResidency(worker, None, None, len(models) * MB, models, now_ms())
    await redis.set(names.residency_key(worker), state.to_bytes())


async def _assigned(redis: Any, names: Names, worker: str) -> set[str]:
    return {m.decode() for m in await redis.smembers(names.assignment_key(worker))}


@pytest.mark.integration
async def test_the_runner_moves_models_to_a_joined_worker_and_then_stays(
    redis_client: Any, names: Names, tmp_path: Path
) -> None:
    registry = ModelRegistry(redis_client, names)
    artifact = tiny_mlp(tmp_path / "m.onnx")
    models = [f"m{i}" for i in range(8)]
    for model in models:
        await registry.register(build_record(model, "1", artifact))
    runner = PlacementRunner(redis_client, names, rebalance_moves=2)
    await _beat(redis_client, names, "w1", {})
    await runner.run(models, {})
    assert await _assigned(redis_client, names, "w1") == set(models)

    # w2 joins; w1 has used m0..m5 lately (m5 last): the unloaded m6 and m7 move first, then the coldest.
    await _beat(redis_client, names, "w1", {f"m{i}": 1000.0 + i for i in range(6)})
    await _beat(redis_client, names, "w2", {})
    first = await runner.run(models, {})
    assert sorted(first.moves) == [("m6", "w1", "w2"), ("m7", "w1", "w2")]
    assert await _assigned(redis_client, names, "w2") == {"m6", "m7"}
    second = await runner.run(models, {})
    assert second.moves == [("m0", "w1", "w2")]  # 6 against 2, then 5 against 3: within the margin
    assert await _assigned(redis_client, names, "w1") == {"m1", "m2", "m3", "m4", "m5"}
    assert await _assigned(redis_client, names, "w2") == {"m0", "m6", "m7"}
    status = await read_placement(redis_client, names, ["m0"])
    assert status["m0"]["workers"] == "w2"
    third = await runner.run(models, {})
    assert third.moves == [] and await _assigned(redis_client, names, "w2") == {"m0", "m6", "m7"}
