"""The jobs ModelConsumer is composed of, each on its own: bulk pacing, the batching window, lane scheduling
and round delivery (pure, with fake lanes and writers; the real broker paths are in test_lanes/test_batching)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from schemas import BatchingConfig, InferenceRequest, InferenceResponse, ReplyAddress, ReplyKind, Tensor
from workers.errors import BackendDownError
from workers.handler import Fetched
from workers.lane_scheduler import LaneScheduler
from workers.pacing import BulkPacer
from workers.round import Undelivered, retrying
from workers.window import fill_window, rows_of


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    value: bytes = b""


def _fetched(offset: int, rows: int = 1, topic: str = "t") -> Fetched:
    request = InferenceRequest(
        id=f"r{offset}",
        model="m",
        version="1",
        inputs=(Tensor.from_numpy("x", np.ones((rows, 2), np.float32)),),
        reply=ReplyAddress(ReplyKind.STREAM, "s"),
    )
    return Fetched(_Record(topic, 0, offset), request)


# pacing ------------------------------------------------------------------------------------------------------
def test_bulk_rests_only_while_interactive_traffic_flows() -> None:
    pacer = BulkPacer(0.25, active_s=1.0)
    pacer.note_bulk_round(0.1, now=10.0)  # no interactive seen: no rest
    assert pacer.rest_ms(10.0) == 0
    pacer.note_interactive(10.0)
    pacer.note_bulk_round(0.1, now=10.5)  # bulk may have 25 %: rests 3 x its round
    assert pacer.rest_ms(10.5) == 300 and pacer.rest_ms(10.7) == 100 and pacer.rest_ms(11.0) == 0
    pacer.note_bulk_round(0.1, now=11.6)  # interactive last seen 1.6 s ago: flowing no more
    assert pacer.rest_ms(11.6) == 0


def test_a_full_bulk_share_never_rests() -> None:
    pacer = BulkPacer(1.0)
    pacer.note_interactive(0.0)
    pacer.note_bulk_round(5.0, now=0.1)
    assert pacer.rest_ms(0.1) == 0


# the batching window -----------------------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_window_fills_until_the_batch_has_its_rows() -> None:
    clock, asked = _Clock(), []
    supply = [[_fetched(1, 3)], [_fetched(2, 4)], [_fetched(3, 1)]]

    async def take(timeout_ms: int, max_records: int) -> list[Fetched]:
        asked.append((timeout_ms, max_records))
        clock.now += 0.001
        return supply.pop(0)

    got = await fill_window([_fetched(0, 2)], BatchingConfig(8, 50), 100, take, clock=clock)
    assert [f.record.offset for f in got] == [0, 1, 2] and rows_of(got) == 9
    assert asked[0] == (50, 99) and asked[1][0] == 49  # the window counts from the first record


async def test_the_window_closes_after_the_queue_delay() -> None:
    clock = _Clock()

    async def take(timeout_ms: int, max_records: int) -> list[Fetched]:
        clock.now += timeout_ms / 1000  # nothing came for the whole wait
        return []

    got = await fill_window([_fetched(0)], BatchingConfig(8, 20), 100, take, clock=clock)
    assert len(got) == 1 and clock.now == pytest.approx(0.02)


async def test_no_batching_or_a_closing_consumer_takes_nothing_more() -> None:
    async def take(timeout_ms: int, max_records: int) -> list[Fetched]:
        raise AssertionError("no take expected")

    assert len(await fill_window([_fetched(0)], None, 100, take)) == 1
    assert len(await fill_window([_fetched(0)], BatchingConfig(1, 20), 100, take)) == 1
    assert len(await fill_window([_fetched(0)], BatchingConfig(8, 20), 100, take, closing=lambda: True)) == 1


# lane scheduling ---------------------------------------------------------------------------------------------
class _FakeConsumer:
    def __init__(self, lane: _FakeLane) -> None:
        self._lane = lane

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[str, list[Fetched]]:
        self._lane.waits.append(timeout_ms)
        if self._lane.fail:
            raise RuntimeError("fetch failed")
        if not self._lane.ready:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        taken, self._lane.ready = self._lane.ready[:max_records], self._lane.ready[max_records:]
        return {"tp": taken}


@dataclass
class _FakeLane:
    ready: list[Fetched] = field(default_factory=list)
    carried: list[Fetched] = field(default_factory=list)
    waits: list[int] = field(default_factory=list)
    fetch_wait: int = 0
    fail: bool = False

    @property
    def consumer(self) -> Any:
        return _FakeConsumer(self)

    async def take(self, timeout_ms: int, max_records: int) -> list[Fetched]:
        if self.carried:
            taken, self.carried = self.carried[:max_records], self.carried[max_records:]
            return taken
        return self.sort(await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records))

    def sort(self, data: dict[str, list[Fetched]]) -> list[Fetched]:
        return [f for records in data.values() for f in records]

    def set_fetch_wait(self, wait_ms: int) -> None:
        self.fetch_wait = wait_ms


def _scheduler(interactive: _FakeLane, bulk: _FakeLane, pacer: BulkPacer | None = None) -> LaneScheduler:
    return LaneScheduler(
        interactive,
        bulk,
        max_fetch_records=100,
        bulk_max_batch=4,
        pacer=pacer or BulkPacer(1.0),
        batching_hint=lambda version: None,
        closing=lambda: False,
        on_in_hand=lambda n: None,
        busy_fetch_wait_ms=5,
        idle_fetch_wait_ms=250,
    )


async def test_interactive_first_and_bulk_rounds_are_bounded() -> None:
    interactive = _FakeLane(ready=[_fetched(i, topic="i") for i in range(3)])
    bulk = _FakeLane(ready=[_fetched(i, topic="b") for i in range(10)])
    scheduler = _scheduler(interactive, bulk)
    fetched, lane = await scheduler.collect()
    assert lane is interactive and len(fetched) == 3
    fetched, lane = await scheduler.collect()
    assert lane is bulk and len(fetched) == 4  # bulk_max_batch: an interactive record waits behind one small round
    interactive.ready.append(_fetched(99, topic="i"))
    fetched, lane = await scheduler.collect()
    assert lane is interactive and [f.record.offset for f in fetched] == [99]


async def test_a_resting_bulk_lane_waits_on_interactive_only() -> None:
    interactive, bulk = _FakeLane(), _FakeLane(ready=[_fetched(0, topic="b")])
    scheduler = _scheduler(interactive, bulk, BulkPacer(0.5))
    scheduler.pacer.note_interactive(time.monotonic())
    scheduler.pacer.note_bulk_round(0.03, time.monotonic())  # bulk rests as long as its round took
    fetched, lane = await scheduler.collect()
    assert lane is bulk and len(fetched) == 1
    assert interactive.waits[0] == 0 and 0 < interactive.waits[1] <= 30  # the rest: a wait on interactive only


async def test_waiting_on_both_lanes_keeps_bulk_records_when_interactive_wins() -> None:
    interactive, bulk = _FakeLane(), _FakeLane()
    scheduler = _scheduler(interactive, bulk)

    async def arrive() -> None:
        await asyncio.sleep(0.01)
        bulk.ready.append(_fetched(7, topic="b"))
        interactive.ready.append(_fetched(8, topic="i"))

    arriving = asyncio.create_task(arrive())
    seen: list[tuple[int, bool]] = []
    for _ in range(3):
        fetched, lane = await scheduler.collect()
        seen.extend((f.record.offset, lane is interactive) for f in fetched)
    await arriving
    assert (8, True) in seen and (7, False) in seen  # nothing dropped, each served in its own lane


async def test_a_failed_fetch_keeps_what_the_other_lane_returned() -> None:
    interactive, bulk = _FakeLane(fail=True), _FakeLane(ready=[_fetched(1, topic="b")])
    scheduler = _scheduler(interactive, bulk)
    scheduler.interactive.take = _empty  # type: ignore[method-assign]  # reach the wait on both lanes
    scheduler.bulk.take = _empty  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await scheduler.collect()
    # both fetches finish at once (neither waits): the bulk records are carried, not dropped
    assert [f.record.offset for f in bulk.carried] == [1]


async def _empty(timeout_ms: int, max_records: int) -> list[Fetched]:
    return []


async def test_an_idle_model_lengthens_its_fetch_wait_and_records_restore_it() -> None:
    interactive, bulk = _FakeLane(), _FakeLane()
    scheduler = _scheduler(interactive, bulk)
    scheduler._last_records -= 5  # nothing for 5 s
    fetched, _ = await scheduler.collect()
    assert not fetched and scheduler.idle and interactive.fetch_wait == bulk.fetch_wait == 250
    bulk.ready.append(_fetched(0, topic="b"))
    await scheduler.collect()
    assert not scheduler.idle and interactive.fetch_wait == bulk.fetch_wait == 5


# round delivery bookkeeping ----------------------------------------------------------------------------------
async def test_retrying_passes_outages_and_lets_other_errors_through() -> None:
    calls = []

    async def step() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise BackendDownError("redis down")
        return "done"

    assert await retrying("m", "deliver", step) == "done" and len(calls) == 3

    async def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await retrying("m", "deliver", broken)


def test_undelivered_says_what_is_left() -> None:
    reply = (ReplyAddress(ReplyKind.STREAM, "s"), InferenceResponse(id="r", model="m", version="1", outputs=()))
    left = Undelivered([], [], [reply])
    assert left and "1 reply(ies)" in left.summary()
    left.replies = []
    assert not left
