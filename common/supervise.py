"""Supervised background routines: a routine that raises is logged with its traceback and run again after a
backoff, so one crash never ends its owner (a gateway's webhook loop, an autoscaler's control loop)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .backoff import Backoff, BackoffPolicy, pause

#: Pauses before a crashed routine runs again: 0.5 s doubling to 30 s, from 0.5 s again after a 30 s run.
RESTART = BackoffPolicy(first_s=0.5, max_s=30.0, stable_s=30.0)


async def supervise(
    name: str,
    routine: Callable[[], Awaitable[None]],
    logger: logging.Logger,
    *,
    stop: asyncio.Event | None = None,
    policy: BackoffPolicy = RESTART,
) -> None:
    """Run ``routine`` until it returns (or ``stop`` is set during a pause); when it raises an Exception, log
    ``"<name> loop crashed"`` with the traceback and run it again after ``policy``'s pause. Never raises an
    Exception (cancellation passes through)."""
    backoff = Backoff(policy)
    loop = asyncio.get_running_loop()
    while stop is None or not stop.is_set():
        started = loop.time()
        try:
            await routine()
            return
        except Exception:
            delay = backoff.next(loop.time() - started)
            logger.exception("%s loop crashed; starting it again in %g s", name, delay)
        if await pause(delay, stop):
            return
