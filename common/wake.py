"""Wake notes: a fleet publisher that wrote a record tells pool workers on ``Names.wake_channel`` which partition it
went to (``topic:partition``, at most once per ``interval_s`` per partition), so a worker that left that partition
out of its fetches (`workers.dormancy`) fetches it at once instead of at its next sweep.

Every fleet publisher sends them: the gateway (after a request record is acknowledged), the direct producer
(`fleet.client.producer`, and so ``fleet batch run``), and the autoscaler for a partition whose records arrived
while its committed offset stayed (which covers records from raw Kafka producers, within a probe of it). A
worker's sweep is only the safety net for a lost note.

Fire and forget, by one owned routine: a lost note costs only the wait for that sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from schemas import Names
from schemas.wake_notes import wake_note

from .supervise import supervise

log = logging.getLogger("fleet.wake")


class WakeNotes:
    """Publishes the partitions records landed on (``note``), each at most once per ``interval_s``; 0 = off.

    ``start()`` (no-op when off) starts the publishing routine; ``stop()`` ends it (idempotent).
    """

    def __init__(self, redis: Any, names: Names, interval_s: float) -> None:
        self._redis = redis
        self._channel = names.wake_channel
        self._interval_s = interval_s
        self._last: dict[tuple[str, int], float] = {}  # (topic, partition) -> when it was last noted (monotonic)
        self._pending: list[str] = []
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether notes are sent at all."""
        return self._interval_s > 0

    def note(self, topic: str, partition: int) -> None:
        """A record landed on ``topic``'s ``partition`` (cheap; published by the routine)."""
        if not self.enabled:
            return
        now = time.monotonic()
        key = (topic, partition)
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            return
        self._last[key] = now
        self._pending.append(wake_note(topic, partition))
        self._ready.set()

    def start(self) -> None:
        """Start the publishing routine (nothing when off)."""
        if self.enabled and self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(
                supervise("wake notes", self._routine, log, stop=self._stop), name="wake-notes"
            )

    async def stop(self) -> None:
        """Stop the routine (notes not sent yet are dropped: the workers' sweeps find those records)."""
        self._stop.set()
        self._ready.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    async def _routine(self) -> None:
        while not self._stop.is_set():
            await self._ready.wait()
            self._ready.clear()
            notes, self._pending = self._pending, []
            for note in notes:
                try:
                    await self._redis.publish(self._channel, note)
                except RedisError as exc:
                    log.debug("wake note %s not sent: %s", note, exc)
