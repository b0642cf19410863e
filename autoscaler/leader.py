"""Leader election among autoscaler replicas: a lease in Redis, so only one of them scales and places.

Run two autoscalers (a standby for high availability, or a rolling update that briefly overlaps) and
both would patch the same Deployments, spawn workers for the same models and write competing
assignments. The lease is one Redis key (``Names.autoscaler_leader_key``) holding the holder's id with
a TTL: the holder renews it every ``lease_s / 3``; a standby takes it over when it expires (holder
killed) or is released (holder stopped). One Lua call does acquire-or-renew atomically.

A holder acts only while its own view of the lease is fresh: when renewals fail (Redis unreachable),
it stops acting ``lease_s * RENEW_DEADLINE`` after its last successful renewal, before the key can
expire and a standby take over, so two leaders never act at once (assuming clocks run at the same
rate, as Kubernetes' leader election does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from common import text
from schemas import Names
from schemas.eventloop import AsyncService

log = logging.getLogger("fleet.autoscaler")

#: Fraction of the lease after the last renewal during which the holder still acts.
RENEW_DEADLINE = 2 / 3

# KEYS[1] lease key; ARGV[1] holder id, ARGV[2] lease in ms. 1 when the caller holds the lease now.
_HOLD_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] lease key; ARGV[1] holder id. Deletes the lease only if the caller holds it.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def holder_id() -> str:
    """Who this process is in the lease: host, pid and a random suffix (unique across restarts)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class LeaderLease(AsyncService):
    """Keeps trying to hold the lease; ``is_leader`` says whether this process may act now."""

    def __init__(
        self,
        redis: Any,
        names: Names,
        *,
        lease_s: float = 10.0,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        self.holder = holder or holder_id()
        self._redis = redis
        self._key = names.autoscaler_leader_key
        self._lease_ms = max(1, round(lease_s * 1000))
        self._lease_s = lease_s
        self._clock = clock
        self._on_change = on_change
        self._hold = redis.register_script(_HOLD_SCRIPT)
        self._release = redis.register_script(_RELEASE_SCRIPT)
        self._held_since: float | None = None  # clock() of the last renewal that succeeded
        self._was_leader = False
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        """True while the last successful acquire/renew is younger than ``lease_s * RENEW_DEADLINE``."""
        held = self._held_since
        return held is not None and self._clock() - held < self._lease_s * RENEW_DEADLINE

    async def try_hold(self) -> bool:
        """Acquire the lease, or renew it if this process holds it; one round trip. False on a Redis error."""
        asked = self._clock()
        try:
            async with asyncio.timeout(self._lease_s / 3):
                held = bool(await self._hold(keys=[self._key], args=[self.holder, self._lease_ms]))
        except (RedisError, OSError, TimeoutError) as exc:
            # Keep the last renewal: the lease may still be ours for a while (is_leader ages it out).
            log.warning("leader lease not renewed: %s", exc or type(exc).__name__)
        else:
            # Held: counted from when it was asked, not answered, which errs on the safe side.
            self._held_since = asked if held else None
        self._report()
        return self.is_leader

    async def start(self) -> None:
        """Try to take the lease now, then keep renewing (or trying) every ``lease_s / 3`` in the background."""
        if self._task is None:
            await self.try_hold()
            self._task = asyncio.create_task(self._routine(), name="fleet-autoscaler-leader-lease")

    async def stop(self) -> None:
        """Stop renewing and hand the lease over at once (a standby need not wait for it to expire)."""
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._held_since is not None:
            self._held_since = None
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._lease_s / 3):
                    await self._release(keys=[self._key], args=[self.holder])
        self._report()

    async def _routine(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._lease_s / 3)
            if not self._closing.is_set():
                await self.try_hold()

    def _report(self) -> None:
        leader = self.is_leader
        if leader == self._was_leader:
            return
        self._was_leader = leader
        if leader:
            log.info("leading: this autoscaler holds the lease and scales (holder %s)", self.holder)
        else:
            log.info("standing by: another autoscaler holds the lease, or it could not be renewed")
        if self._on_change is not None:
            self._on_change(leader)


async def read_leader(redis: Any, names: Names) -> str | None:
    """The holder id of the lease now (None: nobody leads); raises RedisError."""
    value = await redis.get(names.autoscaler_leader_key)
    if value is None:
        return None
    return text(value)
