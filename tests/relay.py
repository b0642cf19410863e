"""A running retry relay (`gateway.retry_relay`) for tests whose workers retry: without one, retries stay on the
namespace's retry topics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from gateway.retry_relay import RetryRelay
from schemas import FleetSettings, Names


@contextlib.asynccontextmanager
async def running_relay(settings: FleetSettings, names: Names, redis: Any) -> AsyncIterator[RetryRelay]:
    """A relay that has joined its group; stopped on exit."""
    relay = RetryRelay(settings, names, redis, "test-relay")
    await relay.start()
    try:
        await relay.wait_running(30)
        yield relay
    finally:
        await relay.stop()
