"""`PoolConsumer._pick` with pipelined rounds (pure logic, no servers): a model busy with a bulk round collects its
next interactive round meanwhile, never a second bulk round, and holds a single thread slot while doing so."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

from schemas import Lane
from workers.handler import Fetched, RoundOutcome, Turn
from workers.pacing import BulkPacer
from workers.pool import PoolConsumer
from workers.pool_state import PoolModel, QueuedRecord
from workers.round import RoundPipeline, RoundRunner
from workers.stats import ModelStats


class _HeldRunner(RoundRunner):
    """Rounds stay on the model until ``leave`` is set."""

    def __init__(self, name: str) -> None:
        nothing = cast(Any, None)
        super().__init__(name, nothing, nothing, nothing, nothing, nothing, ModelStats())
        self.leave = asyncio.Event()

    async def handle(self, fetched: Sequence[Fetched], lane: Lane, turn: Turn | None = None) -> RoundOutcome:
        if turn is not None:
            await turn()
        await self.leave.wait()
        return RoundOutcome()

    async def deliver_outcome(self, outcome: RoundOutcome, retry_topic: str) -> float:
        return 0.0

    def observe(self, fetched: Sequence[Fetched], delivered_ms: float, busy_s: float) -> None:
        pass


def _record(lane: Lane) -> Fetched:
    return cast(Fetched, SimpleNamespace(record=SimpleNamespace(topic=lane.value, partition=0)))


async def _commit(fetched: Sequence[Fetched]) -> None:
    pass


def _pool(threads: int, *names: str) -> tuple[Any, dict[str, _HeldRunner]]:
    pool: Any = PoolConsumer.__new__(PoolConsumer)
    pool._settings = SimpleNamespace(pool_threads=threads)
    pool.models, runners = {}, {}
    nothing = cast(Any, None)
    for name in names:
        runners[name] = runner = _HeldRunner(name)
        model = PoolModel(name, nothing, nothing, runner.stats, runner, BulkPacer(1.0))
        model.pipeline = RoundPipeline(runner, 2)
        pool.models[name] = model
    return pool, runners


def _queue(model: PoolModel, lane: Lane, arrived: float) -> None:
    model.queues[lane].append(QueuedRecord(arrived, _record(lane)))


async def test_a_model_busy_with_bulk_collects_interactive_next_never_a_second_bulk_round() -> None:
    pool, runners = _pool(4, "a")
    a = pool.models["a"]
    _queue(a, Lane.BULK, 1.0)
    assert pool._pick() == (a, Lane.BULK)
    a.pipeline.submit(a.take(Lane.BULK, 1), Lane.BULK, "retry", _commit)
    await asyncio.sleep(0)  # on the model now
    _queue(a, Lane.BULK, 2.0)
    assert pool._pick() is None  # a second bulk round waits until the model is idle
    _queue(a, Lane.INTERACTIVE, 3.0)
    assert pool._pick() == (a, Lane.INTERACTIVE)  # collected while the bulk round runs: waits behind it alone
    a.pipeline.submit(a.take(Lane.INTERACTIVE, 1), Lane.INTERACTIVE, "retry", _commit)
    _queue(a, Lane.INTERACTIVE, 4.0)
    assert pool._pick() is None  # a round already waits for the model
    runners["a"].leave.set()
    await a.pipeline.wait_idle()
    assert pool._pick() == (a, Lane.INTERACTIVE)  # interactive before the queued bulk record


async def test_a_model_with_a_round_on_it_holds_one_slot_and_bulk_keeps_one_free() -> None:
    pool, runners = _pool(2, "a", "b", "c")
    a, b, c = (pool.models[n] for n in "abc")
    a.pipeline.submit([_record(Lane.BULK)], Lane.BULK, "retry", _commit)
    await asyncio.sleep(0)
    _queue(b, Lane.BULK, 1.0)
    assert pool._pick() is None  # the last slot is kept for interactive work
    _queue(c, Lane.INTERACTIVE, 2.0)
    assert pool._pick() == (c, Lane.INTERACTIVE)
    c.pipeline.submit(c.take(Lane.INTERACTIVE, 1), Lane.INTERACTIVE, "retry", _commit)
    _queue(b, Lane.INTERACTIVE, 3.0)
    assert pool._pick() is None  # both slots taken (a and c on the model)
    _queue(a, Lane.INTERACTIVE, 4.0)
    assert pool._pick() == (a, Lane.INTERACTIVE)  # a holds its slot already: its next round may be collected
    for runner in runners.values():
        runner.leave.set()
    await asyncio.gather(a.pipeline.wait_idle(), c.pipeline.wait_idle())
