"""The dynamic-batching window of an interactive round: fill until the batch is full or the window closes.

A round starts with the records in hand; while they hold fewer than the model's ``max_batch_size``
rows (and fewer than ``limit`` records), more are taken until ``max_queue_delay_ms`` has passed since
the first. Where the records come from is the caller's (``take(timeout_ms, max_records)``), so the
per-model consumer and the pool worker share this logic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from schemas import BatchingConfig

from .batching import request_rows
from .handler import Fetched

Take = Callable[[int, int], Awaitable[list[Fetched]]]


def rows_of(fetched: Sequence[Fetched]) -> int:
    """Batch rows the decoded requests of ``fetched`` hold (undecodable records hold none)."""
    return sum(request_rows(f.request) for f in fetched if f.request is not None)


def one_batch(fetched: list[Fetched], batching: BatchingConfig | None) -> tuple[list[Fetched], list[Fetched]]:
    """Split ``fetched`` into the records of one model batch and the rest (in order).

    The batch holds records while their rows fit ``max_batch_size`` (the first record always), so a round never
    queues a second batch behind the first: the records after it make the next round, which a pipelined consumer
    runs as soon as the model frees up while this one's replies are delivered. No batching: all of ``fetched``.
    """
    if batching is None or batching.max_batch_size <= 1:
        return fetched, []
    rows = 0
    for index, item in enumerate(fetched):
        more = request_rows(item.request) if item.request is not None else 0
        if index and rows + more > batching.max_batch_size:
            return fetched[:index], fetched[index:]
        rows += more
    return fetched, []


async def fill_window(
    fetched: list[Fetched],
    batching: BatchingConfig | None,
    limit: int,
    take: Take,
    *,
    closing: Callable[[], bool] = lambda: False,
    on_more: Callable[[int], None] = lambda n: None,
    clock: Callable[[], float] = time.monotonic,
    opened: float | None = None,
) -> list[Fetched]:
    """Extend ``fetched`` (in place, and return it) until the batching window closes.

    No batching (None or ``max_batch_size <= 1``) returns at once. ``on_more(n)`` is told the records
    in hand after each take; ``closing()`` true ends the window early (a stop drains what is in hand).
    ``opened``: when the window opened (the first record's arrival, on ``clock``; default now).
    """
    if batching is None or batching.max_batch_size <= 1:
        return fetched
    deadline = (clock() if opened is None else opened) + batching.max_queue_delay_ms / 1000
    rows = rows_of(fetched)
    while rows < batching.max_batch_size and len(fetched) < limit and not closing():
        remaining_ms = int((deadline - clock()) * 1000)
        if remaining_ms <= 0:
            break
        more = await take(remaining_ms, limit - len(fetched))
        fetched.extend(more)
        on_more(len(fetched))
        rows += rows_of(more)
    return fetched


async def while_busy(
    fetched: list[Fetched],
    batching: BatchingConfig | None,
    limit: int,
    take: Take,
    idle: asyncio.Event,
    *,
    closing: Callable[[], bool] = lambda: False,
    on_more: Callable[[int], None] = lambda n: None,
    poll_ms: int = 200,
) -> list[Fetched]:
    """Extend ``fetched`` (in place, and return it) while the model is busy with the round before (``idle`` not
    set): the round would wait for the model anyway, so records arriving meanwhile join it, up to a full batch.

    A take still waiting when the model frees up is cancelled, which loses nothing: the lane's consumer hands
    records over only when its fetch returns.
    """
    if batching is None or batching.max_batch_size <= 1:
        return fetched
    rows = rows_of(fetched)
    while not idle.is_set() and rows < batching.max_batch_size and len(fetched) < limit and not closing():
        taking = asyncio.ensure_future(take(poll_ms, limit - len(fetched)))
        freed = asyncio.ensure_future(idle.wait())
        try:
            await asyncio.wait({taking, freed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (taking, freed):
                future.cancel()
            await asyncio.gather(taking, freed, return_exceptions=True)
        if taking.cancelled():
            break
        more = taking.result()  # a fetch failure propagates (the caller's backoff)
        fetched.extend(more)
        on_more(len(fetched))
        rows += rows_of(more)
    return fetched
