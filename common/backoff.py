"""Exponential backoff: one policy and one small state object for every retry loop and supervisor.

``BackoffPolicy`` is the schedule (pure: ``delay(attempt)``); ``Backoff`` is the state of one loop
(``next()`` after a failure, ``reset()`` after a success, ``await sleep(stop)`` to wait the next pause
unless the loop is asked to stop first)::

    backoff = Backoff(BackoffPolicy(first_s=0.05, max_s=2.0))
    while not closing.is_set():
        try:
            await step()
        except RedisError:
            if await backoff.sleep(closing):
                break
            continue
        backoff.reset()
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """The pause after failure number n (1-based): ``first_s * factor**(n-1)``, at most ``max_s``.

    ``jitter`` in [0, 1] takes up to that fraction off each pause at random (concurrent retries spread
    out and the cap holds). With ``stable_s``, a failure that comes after the work ran at least that long
    starts the count over (a supervised routine or process that ran fine for a while and then died).
    The unit is the caller's: seconds by convention, but a policy in milliseconds works the same.
    """

    first_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.0
    stable_s: float | None = None

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.max_s < 0:  # first_s over max_s is allowed: every pause is max_s
            raise ValueError(f"backoff pauses must be >= 0, got first_s={self.first_s} and max_s={self.max_s}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff jitter must be within [0, 1], got {self.jitter}")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The pause after failure number ``attempt`` (1-based); ``rand`` draws the jitter from [0, 1)."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        try:
            grown = self.first_s * self.factor ** (attempt - 1)
        except OverflowError:  # a very long outage: far past any cap
            grown = self.max_s
        pause = min(self.max_s, grown)
        return pause * (1.0 - self.jitter * rand()) if self.jitter else pause


class Backoff:
    """The backoff state of one retry loop: how many failures in a row, and the pause after the next one.

    Also an endless iterator of pauses (``for pause in Backoff(policy)``); each item counts a failure.
    """

    def __init__(self, policy: BackoffPolicy, *, rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rand = rand
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failures in a row since the last ``reset()`` (0: the loop is healthy)."""
        return self._failures

    def next(self, ran_s: float | None = None) -> float:
        """Count one more failure and return the pause before the next try.

        ``ran_s`` (how long the work ran before it failed) at or over ``policy.stable_s`` starts the
        count over, so the pause is the first one again.
        """
        stable_s = self.policy.stable_s
        if ran_s is not None and stable_s is not None and ran_s >= stable_s:
            self._failures = 0
        self._failures += 1
        return self.policy.delay(self._failures, self._rand)

    def reset(self) -> None:
        """The work succeeded: the next failure waits the first pause again."""
        self._failures = 0

    async def sleep(self, stop: asyncio.Event | None = None) -> bool:
        """Count a failure and wait its pause; True when ``stop`` was set (before or during the wait)."""
        return await pause(self.next(), stop)

    def __iter__(self) -> Iterator[float]:
        return self

    def __next__(self) -> float:
        return self.next()


async def pause(seconds: float, stop: asyncio.Event | None = None) -> bool:
    """Sleep ``seconds``, cut short when ``stop`` is set; True when ``stop`` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    if not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
    return stop.is_set()
