"""Which lane a model's next round serves: interactive first, bounded bulk rounds, wait on both.

Each round serves one lane: interactive whenever it has records in hand (then the batching window
fills it, `workers.window`; a round holds one model batch, the records beyond it make the next round),
else at most ``bulk_max_batch`` bulk records, so an interactive request waits behind at most one small
bulk round and bulk fills the idle capacity. While bulk rests (`workers.pacing`), only the interactive
lane is waited on. With nothing in hand both lanes are waited on at once (blocking, no busy loop);
interactive wins when both return records (the bulk ones are carried to a later round, never dropped).
After ``IDLE_AFTER_S`` without records the lanes switch to the longer idle fetch wait; the bulk lane alone
does so after ``IDLE_AFTER_S`` without bulk records, even while interactive records flow (on a broker that does
not wake a waiting fetch, each lane's fetch loop at the busy wait costs the worker and the broker CPU for
nothing; a bulk record waits at most the idle wait longer, and any bulk record restores the busy wait).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from schemas import BatchingConfig

from .handler import Fetched
from .pacing import BulkPacer
from .window import fill_window, one_batch, while_busy

#: Longest one idle fetch waits before the routine checks whether it should stop.
IDLE_POLL_MS = 200
#: Seconds without records after which the consumer switches to the idle fetch wait.
IDLE_AFTER_S = 1.0


class Lane(Protocol):
    """What the scheduler needs of a lane (`workers.lanes.LaneConsumer`)."""

    carried: list[Fetched]

    @property
    def consumer(self) -> Any: ...

    async def take(self, timeout_ms: int, max_records: int) -> list[Fetched]: ...

    def sort(self, data: Any) -> list[Fetched]: ...

    def set_fetch_wait(self, wait_ms: int) -> None: ...


class LaneScheduler:
    """Collects the records of a model's next round from its two lanes."""

    def __init__(
        self,
        interactive: Lane,
        bulk: Lane,
        *,
        max_fetch_records: int,
        bulk_max_batch: int,
        pacer: BulkPacer,
        batching_hint: Callable[[str | None], BatchingConfig | None],
        closing: Callable[[], bool],
        on_in_hand: Callable[[int], None],
        busy_fetch_wait_ms: int,
        idle_fetch_wait_ms: int,
    ) -> None:
        self.interactive = interactive
        self.bulk = bulk
        self._limit = max_fetch_records
        self._bulk_limit = min(max_fetch_records, bulk_max_batch)
        self.pacer = pacer
        self._batching_hint = batching_hint
        self._closing = closing
        self._on_in_hand = on_in_hand
        self._busy_wait = busy_fetch_wait_ms
        self._idle_wait = idle_fetch_wait_ms
        self._last_records = time.monotonic()
        self.idle = False
        self._bulk_last_records = time.monotonic()
        #: The bulk lane is on the idle fetch wait (no bulk records for IDLE_AFTER_S), whatever interactive does.
        self.bulk_idle = False

    async def collect(self, model_idle: asyncio.Event | None = None) -> tuple[list[Fetched], Lane]:
        """Records of one round and their lane: interactive first, else a bounded bulk round, else wait.

        ``model_idle`` (a pipelined consumer, `workers.round.RoundPipeline`): while it is not set, a round is on
        the model and only an interactive round is collected (kept open while the model is busy, up to a full
        batch); the wait ends empty when the model frees up, so a bulk round is collected only then.
        """
        self._check_bulk_idle()
        fetched = await self.interactive.take(0, self._limit)
        if fetched:
            return await self._fill(fetched, model_idle), self.interactive
        if model_idle is not None and not model_idle.is_set():
            fetched = await self._interactive_while_busy(model_idle)
            return (await self._fill(fetched, model_idle) if fetched else fetched), self.interactive
        rest_ms = self.pacer.rest_ms(time.monotonic())
        if rest_ms > 0:
            # Bulk rests (FLEET_WORKER_BULK_SHARE) while interactive traffic flows; interactive ends the rest.
            fetched = await self.interactive.take(rest_ms, self._limit)
            if fetched:
                return await self._fill(fetched), self.interactive
        fetched = await self.bulk.take(0, self._bulk_limit)
        if fetched:
            self._note_bulk_records()
            return fetched, self.bulk
        fetched, lane = await self._wait_any()
        if not fetched:
            if not self.idle and time.monotonic() - self._last_records > IDLE_AFTER_S:
                self._set_idle(True)
            return fetched, lane
        if lane is self.interactive:
            return await self._fill(fetched), lane
        self._note_bulk_records()
        return fetched, lane

    async def _interactive_while_busy(self, model_idle: asyncio.Event) -> list[Fetched]:
        """Interactive records, waiting until some arrive, the model frees up or the poll ends."""
        taking = asyncio.ensure_future(self.interactive.take(IDLE_POLL_MS, self._limit))
        freed = asyncio.ensure_future(model_idle.wait())
        try:
            await asyncio.wait({taking, freed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (taking, freed):
                future.cancel()  # a fetch cancelled loses nothing: aiokafka hands records over only when it returns
            await asyncio.gather(taking, freed, return_exceptions=True)
        return [] if taking.cancelled() else taking.result()

    async def _wait_any(self) -> tuple[list[Fetched], Lane]:
        """Block until either lane has records (or the poll ends); interactive wins when both do."""
        poll_ms = IDLE_POLL_MS
        waits = {
            asyncio.ensure_future(self.interactive.consumer.getmany(timeout_ms=poll_ms, max_records=self._limit)): (
                self.interactive
            ),
            asyncio.ensure_future(self.bulk.consumer.getmany(timeout_ms=poll_ms, max_records=self._bulk_limit)): (
                self.bulk
            ),
        }
        try:
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            for future in waits:
                future.cancel()
            raise
        # Cancelling a getmany still waiting loses nothing: aiokafka hands records over only when it returns.
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        results: dict[int, list[Fetched]] = {}
        failure: BaseException | None = None
        for future in done:
            lane = waits[future]
            if future.cancelled():
                continue
            if future.exception() is not None:
                failure = future.exception()
                continue
            results[id(lane)] = lane.sort(future.result())
        if failure is not None:
            # Records one lane returned must not be dropped (later commits would skip them): keep them.
            for lane in (self.interactive, self.bulk):
                lane.carried.extend(results.get(id(lane), []))
            raise failure
        interactive, bulk = results.get(id(self.interactive), []), results.get(id(self.bulk), [])
        if interactive:
            self.bulk.carried.extend(bulk)
            return interactive, self.interactive
        return bulk, self.bulk

    def _note_records(self) -> None:
        self._last_records = time.monotonic()
        if self.idle:
            self._set_idle(False)

    async def _fill(self, fetched: list[Fetched], model_idle: asyncio.Event | None = None) -> list[Fetched]:
        """An interactive round: keep fetching until the batch is full or the batching window closes (and, with
        ``model_idle``, while the model is still busy with the round before)."""
        self.pacer.note_interactive(time.monotonic())
        self._on_in_hand(len(fetched))
        self._note_records()
        version = next((f.request.version for f in fetched if f.request is not None), None)
        batching = self._batching_hint(version)
        fetched = await fill_window(
            fetched, batching, self._limit, self.interactive.take, closing=self._closing, on_more=self._on_in_hand
        )
        if model_idle is not None:
            fetched = await while_busy(
                fetched,
                batching,
                self._limit,
                self.interactive.take,
                model_idle,
                closing=self._closing,
                on_more=self._on_in_hand,
                poll_ms=IDLE_POLL_MS,
            )
        # One model batch per round: the rest waits in hand (taken first next round, dropped on a rebalance like
        # any record not committed), so its replies do not wait for batches queued behind it.
        fetched, rest = one_batch(fetched, batching)
        if rest:
            self.interactive.carried[:0] = rest
        return fetched

    def _note_bulk_records(self) -> None:
        """Bulk records came: the bulk lane is back on the busy fetch wait."""
        self._bulk_last_records = time.monotonic()
        if self.bulk_idle:
            self.bulk_idle = False
            self.bulk.set_fetch_wait(self._busy_wait)
        self._note_records()

    def _check_bulk_idle(self) -> None:
        """Put a bulk lane without records for ``IDLE_AFTER_S`` on the idle fetch wait."""
        if self.bulk_idle or self._idle_wait <= 0 or time.monotonic() - self._bulk_last_records <= IDLE_AFTER_S:
            return
        self.bulk_idle = True
        self.bulk.set_fetch_wait(max(self._busy_wait, self._idle_wait))

    def _set_idle(self, idle: bool) -> None:
        """Lengthen the fetch wait while idle, restore it when records flow.

        A broker that does not wake a waiting fetch when data arrives (the local Tansu broker) makes
        the fetch wait the latency floor, so it is kept short under load; idle, the same short wait
        means a fetch round trip every few milliseconds for nothing.
        """
        self.idle = idle
        if self._idle_wait <= 0:
            return
        for lane in (self.interactive, self.bulk):
            quiet = idle or (lane is self.bulk and self.bulk_idle)
            lane.set_fetch_wait(max(self._busy_wait, self._idle_wait) if quiet else self._busy_wait)
