"""Wake notes: after a request record lands, the gateway tells pool workers on ``Names.wake_channel`` which
partition it went to (``topic:partition``, at most once per ``interval_s`` per partition), so a worker that left
that partition out of its fetches (`workers.dormancy`) fetches it at once instead of at its next sweep.

Fire and forget, by one owned routine: a lost note costs only the wait for that sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from common import supervise
from schemas import Names

log = logging.getLogger("fleet.gateway")


class WakeNotes:
    """Publishes the partitions requests landed on (``note``), each at most once per ``interval_s``; 0 = off."""

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
        """A request record landed on ``topic``'s ``partition`` (cheap; published by the routine)."""
        if not self.enabled:
            return
        now = time.monotonic()
        key = (topic, partition)
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            return
        self._last[key] = now
        self._pending.append(f"{topic}:{partition}")
        self._ready.set()

    def start(self) -> None:
        """Start the publishing routine (nothing when off)."""
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(
                supervise("wake notes", self._routine, log, stop=self._stop), name="gateway-wake-notes"
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
