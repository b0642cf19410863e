"""The round waiting for the model goes on it before the round that just left it delivers (pure logic, no servers)."""

from __future__ import annotations

from workers.handler import RoundOutcome

from .test_pipeline import _pipeline, _settle, _submit


async def test_the_next_round_reaches_the_model_before_the_one_before_starts_delivering() -> None:
    runner, pipeline, committed = _pipeline(2)
    deliver = runner.deliver_outcome

    async def logged_deliver(outcome: RoundOutcome, retry_topic: str) -> float:
        ((name, _, _),) = outcome.settled
        runner.log.append(f"delivering {name}")
        return await deliver(outcome, retry_topic)

    runner.deliver_outcome = logged_deliver  # type: ignore[method-assign]
    run_a, deliver_a = runner.gate("a")
    run_b, deliver_b = runner.gate("b")
    _submit(pipeline, "a")
    _submit(pipeline, "b")
    await _settle()
    assert runner.log == ["run a"]
    run_a.set()
    await _settle()
    assert runner.log[:3] == ["run a", "run b", "delivering a"]
    for gate in (deliver_a, run_b, deliver_b):
        gate.set()
    await pipeline.drain()
    assert committed == ["a", "b"] and runner.most_on_model == 1
