"""A batched model's interactive round holds one model batch: records in hand beyond it make the next round (so a
pipelined consumer has the next batch ready when the model frees up, and the first batch's replies do not wait for
the batches behind it). Pure, with fake lanes."""

from __future__ import annotations

import numpy as np

from schemas import BatchingConfig, InferenceRequest, ReplyAddress, ReplyKind, Tensor
from workers.handler import Fetched
from workers.lane_scheduler import LaneScheduler
from workers.pacing import BulkPacer
from workers.window import one_batch


class _Record:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = "t", 0, offset


def _fetched(offset: int, rows: int = 1) -> Fetched:
    request = InferenceRequest(
        id=f"r{offset}",
        model="m",
        version="1",
        inputs=(Tensor.from_numpy("x", np.ones((rows, 2), np.float32)),),
        reply=ReplyAddress(ReplyKind.STREAM, "s"),
    )
    return Fetched(_Record(offset), request)


class _Lane:
    """A lane whose records are all in the consumer's buffer already."""

    def __init__(self, ready: list[Fetched]) -> None:
        self.ready = ready
        self.carried: list[Fetched] = []

    @property
    def consumer(self) -> _Lane:
        return self

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[str, list[Fetched]]:
        taken, self.ready = self.ready[:max_records], self.ready[max_records:]
        return {"tp": taken}

    async def take(self, timeout_ms: int, max_records: int) -> list[Fetched]:
        if self.carried:
            taken, self.carried = self.carried[:max_records], self.carried[max_records:]
            return taken
        return self.sort(await self.getmany(timeout_ms, max_records))

    def sort(self, data: dict[str, list[Fetched]]) -> list[Fetched]:
        return [f for records in data.values() for f in records]

    def set_fetch_wait(self, wait_ms: int) -> None:
        pass


def _offsets(fetched: list[Fetched]) -> list[int]:
    return [f.record.offset for f in fetched]


async def test_records_beyond_one_batch_make_the_next_rounds_in_order() -> None:
    interactive = _Lane([_fetched(i) for i in range(40)])
    scheduler = LaneScheduler(
        interactive,
        _Lane([]),
        max_fetch_records=512,
        bulk_max_batch=4,
        pacer=BulkPacer(1.0),
        batching_hint=lambda version: BatchingConfig(16, 1.0),
        closing=lambda: False,
        on_in_hand=lambda n: None,
        busy_fetch_wait_ms=5,
        idle_fetch_wait_ms=0,
    )
    rounds = [_offsets((await scheduler.collect())[0]) for _ in range(3)]
    assert rounds == [list(range(16)), list(range(16, 32)), list(range(32, 40))]
    assert not interactive.carried


def test_one_batch_counts_rows_and_keeps_a_record_whole() -> None:
    batching = BatchingConfig(16, 1.0)
    fives = [_fetched(i, rows=5) for i in range(5)]
    taken, rest = one_batch(fives, batching)
    assert (_offsets(taken), _offsets(rest)) == ([0, 1, 2], [3, 4])  # 15 rows: a fourth would make 20
    big = [_fetched(0, rows=40), _fetched(1)]
    assert _offsets(one_batch(big, batching)[0]) == [0]  # a record over the batch runs alone
    undecodable = Fetched(_Record(9), None)
    assert one_batch([undecodable, *fives[:3]], batching)[1] == []  # no rows: never a reason to split
    assert one_batch(fives, None) == (fives, []) and one_batch(fives, BatchingConfig(1, 1.0)) == (fives, [])
