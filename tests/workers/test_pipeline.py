"""The round pipeline's ordering (pure logic, no servers): one round on the model at a time, in order; the next
round runs while the one before delivers; offsets committed in order, never past an undelivered round."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest

from schemas import Lane
from workers.handler import Fetched, RoundOutcome, Turn
from workers.round import Commit, RoundPipeline, RoundRunner
from workers.stats import ModelStats


class _Runner(RoundRunner):
    """A round runner whose model run and delivery are gates the test opens, with a log of what happened."""

    def __init__(self) -> None:
        none = cast(Any, None)
        super().__init__("m", none, none, none, none, none, ModelStats())
        self.log: list[str] = []
        self.run_gates: dict[str, asyncio.Event] = {}
        self.deliver_gates: dict[str, asyncio.Event] = {}
        self.failures: dict[str, BaseException] = {}
        self.on_model = 0
        self.most_on_model = 0
        self.commit: Commit = _no_commit

    def gate(self, name: str) -> tuple[asyncio.Event, asyncio.Event]:
        self.run_gates[name], self.deliver_gates[name] = asyncio.Event(), asyncio.Event()
        return self.run_gates[name], self.deliver_gates[name]

    async def handle(self, fetched: Sequence[Fetched], lane: Lane, turn: Turn | None = None) -> RoundOutcome:
        if turn is not None:
            await turn()  # on the model from here on
        name = _name(fetched)
        self.on_model += 1
        self.most_on_model = max(self.most_on_model, self.on_model)
        self.log.append(f"run {name}")
        try:
            await self.run_gates[name].wait()
        finally:
            self.on_model -= 1
        return RoundOutcome(settled={(name, 0, 0)})

    async def deliver_outcome(self, outcome: RoundOutcome, retry_topic: str) -> float:
        ((name, _, _),) = outcome.settled
        await self.deliver_gates[name].wait()
        if name in self.failures:
            raise self.failures[name]
        self.log.append(f"delivered {name}")
        return 0.0

    def observe(self, fetched: Sequence[Fetched], delivered_ms: float, busy_s: float) -> None:
        self.log.append(f"observed {_name(fetched)}")


async def _no_commit(fetched: Sequence[Fetched]) -> None:
    raise AssertionError("no commit function")


def _round(name: str) -> list[Fetched]:
    record = SimpleNamespace(topic=name, partition=0, offset=0, value=b"", headers=[])
    return [Fetched(record, None)]


def _name(fetched: Sequence[Fetched]) -> str:
    return str(fetched[0].record.topic)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _pipeline(depth: int) -> tuple[_Runner, RoundPipeline, list[str]]:
    runner = _Runner()
    committed: list[str] = []

    async def commit(fetched: Sequence[Fetched]) -> None:
        committed.append(_name(fetched))
        runner.log.append(f"committed {_name(fetched)}")

    runner.commit = commit
    return runner, RoundPipeline(runner, depth), committed


def _submit(pipeline: RoundPipeline, name: str) -> None:
    runner = cast(_Runner, pipeline._runner)
    pipeline.submit(_round(name), Lane.INTERACTIVE, "retry", runner.commit)


async def _ready_now(pipeline: RoundPipeline) -> bool:
    waiting = asyncio.ensure_future(pipeline.ready())
    await _settle()
    done = waiting.done()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    return done


async def test_a_fast_round_never_commits_past_a_slow_delivery_before_it() -> None:
    runner, pipeline, committed = _pipeline(2)
    run_a, deliver_a = runner.gate("a")
    run_b, deliver_b = runner.gate("b")
    _submit(pipeline, "a")
    run_a.set()
    await _settle()
    # a delivers (slowly); the next round may be collected and runs on the model meanwhile.
    assert await _ready_now(pipeline)
    _submit(pipeline, "b")
    run_b.set()
    deliver_b.set()
    await _settle()
    # b has run; its delivery waits for a's (a redelivered request that a stored first must not be sent twice)
    assert runner.log == ["run a", "run b"]
    assert committed == []
    assert not await _ready_now(pipeline)  # two rounds in flight: depth reached
    deliver_a.set()
    await pipeline.drain()
    assert committed == ["a", "b"]
    log = runner.log
    assert log.index("delivered a") < log.index("delivered b") < log.index("committed b")
    assert log.index("committed a") < log.index("committed b")
    assert pipeline.in_flight == 0 and pipeline.model_idle.is_set()


async def test_the_model_runs_one_round_at_a_time_in_submission_order() -> None:
    runner, pipeline, committed = _pipeline(3)
    gates = {name: runner.gate(name) for name in "abc"}
    for name in "abc":
        _submit(pipeline, name)
    assert not pipeline.model_idle.is_set()
    await _settle()
    assert runner.log == ["run a"]
    for name in "cba":  # opening the later gates first changes nothing: the order is the submission's
        gates[name][1].set()
    gates["c"][0].set()
    gates["b"][0].set()
    await _settle()
    assert runner.log == ["run a"]
    gates["a"][0].set()
    await pipeline.drain()
    assert [line for line in runner.log if line.startswith("run")] == ["run a", "run b", "run c"]
    assert runner.most_on_model == 1
    assert committed == ["a", "b", "c"]


async def test_the_next_round_is_collected_only_once_no_round_waits_for_the_model() -> None:
    runner, pipeline, _ = _pipeline(3)
    run_a, deliver_a = runner.gate("a")
    run_b, deliver_b = runner.gate("b")
    _submit(pipeline, "a")
    await _settle()
    assert await _ready_now(pipeline)  # a is on the model: collect the next one meanwhile
    _submit(pipeline, "b")
    await _settle()
    assert not await _ready_now(pipeline)  # b waits for the model: collecting more would only make small rounds
    run_a.set()
    await _settle()
    assert await _ready_now(pipeline)  # b is on the model now, a delivering
    for gate in (run_b, deliver_a, deliver_b):
        gate.set()
    await pipeline.drain()


async def test_depth_one_is_the_serial_round() -> None:
    runner, pipeline, committed = _pipeline(1)
    run_a, deliver_a = runner.gate("a")
    _submit(pipeline, "a")
    run_a.set()
    await _settle()
    assert not await _ready_now(pipeline)  # delivering: nothing else is collected before the commit
    deliver_a.set()
    await _settle()
    assert committed == ["a"]
    assert await _ready_now(pipeline)


async def test_a_failed_round_fails_the_pipeline_and_the_rounds_after_it_commit_nothing() -> None:
    runner, pipeline, committed = _pipeline(2)
    run_a, deliver_a = runner.gate("a")
    run_b, deliver_b = runner.gate("b")
    runner.failures["a"] = RuntimeError("boom")
    _submit(pipeline, "a")
    run_a.set()
    await _settle()
    _submit(pipeline, "b")
    run_b.set()
    deliver_b.set()
    await _settle()
    deliver_a.set()
    with pytest.raises(RuntimeError, match="boom"):
        await pipeline.drain()
    assert committed == []
    assert "delivered b" in runner.log
    with pytest.raises(RuntimeError, match="boom"):
        await pipeline.ready()


async def test_cancel_leaves_nothing_committed_and_nothing_waiting() -> None:
    runner, pipeline, committed = _pipeline(2)
    run_a, _ = runner.gate("a")
    runner.gate("b")
    _submit(pipeline, "a")
    run_a.set()
    await _settle()
    _submit(pipeline, "b")
    await _settle()
    await pipeline.cancel()
    assert committed == [] and pipeline.in_flight == 0
    assert pipeline.model_idle.is_set()
    assert runner.in_hand == 0
