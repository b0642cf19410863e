"""A quiet bulk lane fetches on the idle wait while interactive records flow (pure scheduling logic, fake lanes)."""

from __future__ import annotations

import time

import pytest

from tests.workers.test_consumer_parts import _FakeLane, _fetched, _scheduler
from workers.lane_scheduler import LaneScheduler


def _made_earlier(interactive: _FakeLane, bulk: _FakeLane, seconds: float) -> LaneScheduler:
    """A scheduler made ``seconds`` ago that has seen no record since (only its construction sees the old clock:
    the event loop keeps the real one)."""
    then = time.monotonic() - seconds
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: then)
        return _scheduler(interactive, bulk)


async def test_a_quiet_bulk_lane_takes_the_idle_fetch_wait_while_interactive_flows() -> None:
    interactive, bulk = _FakeLane(), _FakeLane()
    scheduler = _made_earlier(interactive, bulk, 5)  # 5 s without a bulk record; interactive records keep coming
    interactive.ready.append(_fetched(0, topic="i"))
    fetched, lane = await scheduler.collect()
    assert lane is interactive and len(fetched) == 1 and not scheduler.idle
    assert bulk.fetch_wait == 250 and interactive.fetch_wait != 250

    bulk.ready.append(_fetched(0, topic="b"))  # a bulk record restores the busy wait at once
    fetched, lane = await scheduler.collect()
    assert lane is bulk and len(fetched) == 1
    assert bulk.fetch_wait == 5


async def test_interactive_records_after_a_whole_idle_leave_a_quiet_bulk_lane_on_the_idle_wait() -> None:
    interactive, bulk = _FakeLane(), _FakeLane()
    scheduler = _made_earlier(interactive, bulk, 5)
    await scheduler.collect()  # nothing anywhere: both lanes on the idle wait
    assert scheduler.idle and interactive.fetch_wait == bulk.fetch_wait == 250
    interactive.ready.append(_fetched(1, topic="i"))
    await scheduler.collect()
    assert not scheduler.idle and interactive.fetch_wait == 5 and bulk.fetch_wait == 250
