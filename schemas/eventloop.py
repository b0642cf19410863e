"""Running a service's main coroutine on the fastest event loop available, and stopping it on signals.

uvloop (a base dependency) cuts the per-request cost of socket I/O roughly in half; where it is missing
the standard asyncio loop is used. ``FLEET_EVENT_LOOP=asyncio`` forces the standard loop.
`stop_signals` is how every ``python -m`` entry point turns SIGTERM/SIGINT into a graceful stop, and
`AsyncService` gives every service with ``start()``/``stop()`` its ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")

log = logging.getLogger("fleet.schemas")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when installed and not disabled, else None (the standard loop)."""
    if os.environ.get("FLEET_EVENT_LOOP", "auto") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    # Typed here because mypy sees the module as Any where the extra is not installed.
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop chosen by :func:`loop_factory`."""
    factory = loop_factory()
    log.debug("event loop: %s", "uvloop" if factory else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


#: The signals that ask a service to stop gracefully.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_signals(callback: Callable[[], object]) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT call ``callback`` on the running loop instead of killing the process."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, callback)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


class AsyncService:
    """Base of the services with explicit ``start()`` / ``stop()``: ``async with`` starts and stops them."""

    async def start(self) -> None:
        """Start the service (subclasses implement it)."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop the service (subclasses implement it)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
