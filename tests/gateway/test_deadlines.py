"""The gateway's shared deadline timer (pure asyncio, no servers): the semantics of ``asyncio.timeout_at``."""

from __future__ import annotations

import asyncio

import pytest

from gateway.deadlines import Deadlines


async def _expires_at(deadlines: Deadlines, when: float) -> float:
    """Wait inside a scope until its TimeoutError; the loop time it came at."""
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with deadlines.at(when):
            await asyncio.sleep(3600)
    return loop.time()


async def test_a_deadline_raises_timeout_error_not_before_it() -> None:
    deadlines = Deadlines()
    when = asyncio.get_running_loop().time() + 0.02
    assert await _expires_at(deadlines, when) >= when
    assert len(deadlines) == 0


async def test_a_scope_that_ends_in_time_leaves_nothing_behind_and_is_not_cancelled_later() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    async with deadlines.at(loop.time() + 0.02):
        await asyncio.sleep(0)
    assert len(deadlines) == 0
    await asyncio.sleep(0.05)  # past the deadline: nothing cancels this task


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()

    async def body() -> None:
        async with deadlines.at(loop.time() + 60):
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_a_shorter_deadline_added_later_fires_first_and_each_fires_in_its_turn() -> None:
    deadlines = Deadlines()
    now = asyncio.get_running_loop().time()
    whens = [now + 0.2, now + 0.02, now + 0.1]
    async with asyncio.timeout(10):  # a hang guard only
        times = await asyncio.gather(*(_expires_at(deadlines, when) for when in whens))
    assert all(at >= when for at, when in zip(times, whens, strict=True))
    assert times[1] <= times[2] <= times[0]


async def test_a_deadline_already_past_raises_at_the_first_wait() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    assert await _expires_at(deadlines, loop.time() - 1) >= loop.time() - 1
