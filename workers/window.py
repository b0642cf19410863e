"""The dynamic-batching window of an interactive round: fill until the batch is full or the window closes.

A round starts with the records in hand; while they hold fewer than the model's ``max_batch_size``
rows (and fewer than ``limit`` records), more are taken until ``max_queue_delay_ms`` has passed since
the first. Where the records come from is the caller's (``take(timeout_ms, max_records)``), so the
per-model consumer and the pool worker share this logic.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from schemas import BatchingConfig

from .batching import request_rows
from .handler import Fetched

Take = Callable[[int, int], Awaitable[list[Fetched]]]


def rows_of(fetched: Sequence[Fetched]) -> int:
    """Batch rows the decoded requests of ``fetched`` hold (undecodable records hold none)."""
    return sum(request_rows(f.request) for f in fetched if f.request is not None)


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
