"""fleet.client.producer.results: ProducerResult and the in-flight table, as pure logic with a fake clock."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fleet.client.producer import PendingTable, ProducerResult, RequestFailedError
from schemas import ErrorCode, InferenceResponse, Tensor


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def answer(request_id: str, model: str = "m", version: str = "1") -> ProducerResult:
    outputs = (Tensor.from_numpy("y", np.ones((1, 2), np.float32)),)
    return ProducerResult.from_response(InferenceResponse(request_id, model, version, outputs=outputs))


async def collect(table: PendingTable, count: int) -> list[ProducerResult]:
    return [r async for r in table.results(count)]


def test_result_views() -> None:
    ok = answer("a")
    assert ok.ok and ok.unwrap()["y"].shape == (1, 2)
    failed = ProducerResult.failed("b", "m", "1", ErrorCode.INVALID_INPUT, "bad")
    assert not failed.ok
    with pytest.raises(RequestFailedError, match="request b: bad") as info:
        failed.unwrap()
    assert info.value.code is ErrorCode.INVALID_INPUT


@pytest.mark.parametrize(("max_in_flight", "timeout_s"), [(0, 1.0), (1, 0.0)])
def test_bad_bounds_are_refused(max_in_flight: int, timeout_s: float) -> None:
    with pytest.raises(ValueError):
        PendingTable(max_in_flight, timeout_s)


async def test_answers_go_to_their_future_or_to_results() -> None:
    table = PendingTable(10, 5.0)
    future: asyncio.Future[ProducerResult] = asyncio.get_running_loop().create_future()
    assert table.add("a", "m", "1", future) is False
    assert table.add("b", "m", "1") is False
    assert "a" in table and table.in_flight == 2
    table.complete(answer("b"))
    table.complete(answer("a"))
    assert future.result().request_id == "a"
    assert [r.request_id for r in await collect(table, 1)] == ["b"]
    assert table.in_flight == 0


async def test_in_flight_bound_makes_acquire_wait_until_an_answer() -> None:
    table = PendingTable(2, 5.0)
    for request_id in ("a", "b"):
        await table.acquire()
        table.add(request_id, "m", "1")
    third = asyncio.create_task(table.acquire())
    await asyncio.sleep(0)
    assert not third.done()  # backpressure
    table.complete(answer("a"))
    await asyncio.wait_for(third, 5)
    table.release()  # not sent after all
    await asyncio.wait_for(table.acquire(), 5)  # the slot came back
    table.forget("b")  # Kafka holds it and nobody reads a stream here
    await asyncio.wait_for(table.acquire(), 5)
    assert table.in_flight == 0


async def test_an_early_answer_is_stashed_and_the_resent_request_takes_it() -> None:
    table = PendingTable(10, 5.0)
    table.complete(answer("r-1"))  # answered before (re)sent: nobody waits
    assert table.in_flight == 0
    assert table.add("r-1", "m", "1") is True  # nothing to send: first answer wins
    assert [r.request_id for r in await collect(table, 1)] == ["r-1"]
    assert table.add("r-1", "m", "1") is False  # taken: not stashed twice
    table.forget("r-1")


async def test_stash_keeps_the_newest_answers_only() -> None:
    table = PendingTable(10, 5.0)
    for i in range(10_001):
        table.complete(ProducerResult.failed(str(i), "m", "1", ErrorCode.MODEL_ERROR, "x"))
    assert table.add("0", "m", "1") is False  # the oldest was dropped
    assert table.add("1", "m", "1") is True


async def test_failure_of_this_side_names_the_request() -> None:
    table = PendingTable(10, 5.0)
    table.add("a", "tiny", "2")
    table.fail("a", ErrorCode.BACKEND_UNAVAILABLE, "Kafka did not take the request")
    table.fail("gone", ErrorCode.BACKEND_UNAVAILABLE, "ignored: not in flight")
    (result,) = await collect(table, 1)
    assert (result.model, result.version) == ("tiny", "2")
    assert result.error is not None and result.error.code is ErrorCode.BACKEND_UNAVAILABLE


async def test_sweep_expires_requests_after_timeout_plus_grace() -> None:
    clock = Clock()
    table = PendingTable(10, 2.0, clock=clock)
    table.add("old", "m", "1")
    clock.now += 1.0
    table.add("new", "m", "1")
    clock.now += 2.5  # "old" is 3.5 s old: past 2 s + 1 s grace; "new" is 2.5 s old
    assert table.sweep() == 1
    (result,) = await collect(table, 1)
    assert result.request_id == "old" and result.error is not None
    assert result.error.code is ErrorCode.DEADLINE_EXCEEDED and "no answer within 2 s" in result.error.message
    clock.now += 1.0
    assert table.sweep() == 1 and table.in_flight == 0


async def test_the_sweeper_routine_expires_requests() -> None:
    table = PendingTable(10, 0.01)
    await table.start()
    table.add("a", "m", "1")
    (result,) = await asyncio.wait_for(collect(table, 1), 10)
    assert result.error is not None and result.error.code is ErrorCode.DEADLINE_EXCEEDED
    await table.stop()


async def test_stop_fails_what_waits_and_ends_every_iterator() -> None:
    table = PendingTable(10, 5.0)
    await table.start()
    future: asyncio.Future[ProducerResult] = asyncio.get_running_loop().create_future()
    table.add("a", "m", "1", future)
    table.add("b", "m", "1")
    await table.stop()
    await table.stop()  # idempotent
    error = future.result().error
    assert error is not None and error.code is ErrorCode.BACKEND_UNAVAILABLE
    assert [r.request_id for r in await collect(table, 5)] == ["b"]  # then it ends
    assert await collect(table, 5) == []  # later iterators end too
