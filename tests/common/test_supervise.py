"""common.supervise: a routine that raises runs again after a backoff, and never takes its owner down."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common import BackoffPolicy, supervise

FAST = BackoffPolicy(first_s=0.001, max_s=0.01)
log = logging.getLogger("tests.supervise")


async def test_a_crashing_routine_runs_again_until_it_returns(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0

    async def routine() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"crash {runs}")

    await supervise("test", routine, log, policy=FAST)
    assert runs == 3
    crashes = [r for r in caplog.records if "test loop crashed" in r.getMessage()]
    assert len(crashes) == 2 and all(r.exc_info for r in crashes)


async def test_stop_ends_the_pause_after_a_crash() -> None:
    stop = asyncio.Event()

    async def routine() -> None:
        stop.set()
        raise RuntimeError("crash")

    async with asyncio.timeout(5):  # the 60 s pause is cut short by stop
        await supervise("test", routine, log, stop=stop, policy=BackoffPolicy(first_s=60.0, max_s=60.0))


async def test_cancellation_passes_through() -> None:
    started = asyncio.Event()

    async def routine() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise("test", routine, log))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
