"""`PoolConsumer._pick` over many assigned models (pure logic, no servers): a model with nothing queued and nothing in
hand is passed over without asking its pipeline, and a pick among the busy ones is the same as before."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from schemas import Lane
from workers.handler import Fetched
from workers.pool_state import OwnedPartition, PoolModel
from workers.round import RoundPipeline

from .test_pool_schedule import _pool, _queue


class _CountingPipeline(RoundPipeline):
    """Counts the questions a pick asks of the pipeline."""

    asked = 0

    def before_model(self, lane: Lane | None = None) -> int:
        _CountingPipeline.asked += 1
        return super().before_model(lane)

    def may_collect(self) -> bool:
        _CountingPipeline.asked += 1
        return super().may_collect()


async def _commit(fetched: Sequence[Fetched]) -> None:
    pass


def _counted(pool: Any) -> None:
    for model in pool.models.values():
        model.pipeline = _CountingPipeline(model.rounds, 2)


async def test_a_pick_passes_over_the_settled_models_without_asking_their_pipelines() -> None:
    names = [f"m{i:03d}" for i in range(300)]
    pool, _ = _pool(4, *names)
    _counted(pool)
    _CountingPipeline.asked = 0
    assert pool._pick() is None
    assert _CountingPipeline.asked == 0  # 300 idle models: none was looked at beyond its queues and round

    busy: PoolModel = pool.models["m150"]
    _queue(busy, Lane.INTERACTIVE, 1.0)
    assert pool._pick() == (busy, Lane.INTERACTIVE)
    assert 0 < _CountingPipeline.asked <= 3  # the one model with a record queued


async def test_a_model_with_a_round_in_its_pipeline_still_holds_its_slot() -> None:
    pool, runners = _pool(2, "a", "b", "c")
    a, b, c = (pool.models[n] for n in "abc")
    _queue(a, Lane.INTERACTIVE, 1.0)
    assert pool._pick() == (a, Lane.INTERACTIVE)
    a.pipeline.submit(a.take(Lane.INTERACTIVE, 1), Lane.INTERACTIVE, "retry", _commit)
    await asyncio.sleep(0)  # on the model, its queue empty: not settled, it holds one of the two slots
    assert not a.settled()
    _queue(b, Lane.INTERACTIVE, 2.0)
    assert pool._pick() == (b, Lane.INTERACTIVE)
    b.pipeline.submit(b.take(Lane.INTERACTIVE, 1), Lane.INTERACTIVE, "retry", _commit)
    await asyncio.sleep(0)
    _queue(c, Lane.INTERACTIVE, 3.0)
    assert pool._pick() is None  # both slots held by rounds on their models
    runners["a"].leave.set()
    await a.pipeline.wait_idle()
    assert a.settled()
    assert pool._pick() == (c, Lane.INTERACTIVE)
    runners["b"].leave.set()
    await b.pipeline.wait_idle()


class _Paused:
    """A lane consumer's pause/resume."""

    def __init__(self) -> None:
        self.resumed: list[TopicPartition] = []

    def resume(self, *tps: TopicPartition) -> None:
        self.resumed.extend(tps)


def test_a_drained_model_resumes_only_its_own_partitions_paused_for_a_full_queue() -> None:
    pool, _ = _pool(2, "a", "b")
    a_tp, b_tp = TopicPartition("requests.a", 0), TopicPartition("requests.b", 0)
    pool._settings = SimpleNamespace(pool_queue_records=4)
    pool._owned = {tp: OwnedPartition(tp.topic[-1], Lane.INTERACTIVE, "g") for tp in (a_tp, b_tp)}
    pool._full = set()
    consumer = _Paused()
    pool._consumers = {Lane.INTERACTIVE: consumer}
    pool._dormancy = {Lane.INTERACTIVE: SimpleNamespace(may_resume=lambda tp: True)}
    pool._resume_drained(pool.models["a"], Lane.INTERACTIVE)
    assert consumer.resumed == []  # nothing paused
    pool._full = {a_tp, b_tp}
    for _ in range(3):
        _queue(pool.models["a"], Lane.INTERACTIVE, 1.0)
    pool._resume_drained(pool.models["a"], Lane.INTERACTIVE)
    assert consumer.resumed == []  # 3 queued: more than half the cap, still paused
    pool.models["a"].take(Lane.INTERACTIVE, 2)
    pool._resume_drained(pool.models["a"], Lane.INTERACTIVE)
    assert consumer.resumed == [a_tp] and pool._full == {b_tp}
