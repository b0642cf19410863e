"""Request deadlines on one shared loop timer instead of one timer per request.

``asyncio.timeout_at`` arms a loop timer for each request and cancels it when the request is answered; on uvloop
that is a timer handle made, started, stopped and closed per request (~4 % of the gateway's CPU at concurrency 64).
:class:`Deadlines` files each deadline in a slot of ``granularity_s`` and keeps one loop timer for the earliest
slot that still holds a waiting request; a request that ends leaves its slot (a set removal). A deadline may fire
up to ``granularity_s`` late, and not early beyond the loop clock's millisecond (as asyncio's timers). Inside the
scope, an expired deadline cancels the task and the scope raises ``TimeoutError`` on exit, as
``asyncio.timeout_at`` does (a cancellation from elsewhere stays one).
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import math
from types import TracebackType

#: Width of one deadline slot: how late a deadline may fire.
GRANULARITY_S = 0.005
_CLOCK_RESOLUTION_S = 0.001


class _State(enum.Enum):
    WAITING = "waiting"
    EXPIRING = "expiring"
    DONE = "done"


class Deadlines:
    """One event loop's deadlines: ``async with deadlines.at(when): ...`` (``when`` on the loop's clock)."""

    def __init__(self, granularity_s: float = GRANULARITY_S) -> None:
        self._granularity_s = granularity_s
        self._slots: dict[int, set[DeadlineScope]] = {}
        self._keys: list[int] = []  # slot keys, a heap; a key whose slot emptied is dropped when it comes up
        self._timer: asyncio.TimerHandle | None = None
        self._timer_key: int | None = None

    def at(self, when: float) -> DeadlineScope:
        """A scope whose body is cancelled (TimeoutError on exit) once the loop's clock passes ``when``."""
        return DeadlineScope(self, when)

    def __len__(self) -> int:
        """Scopes waiting for their deadline."""
        return sum(len(slot) for slot in self._slots.values())

    def _add(self, scope: DeadlineScope) -> None:
        key = math.ceil(scope.when / self._granularity_s)
        scope.key = key
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = set()
            heapq.heappush(self._keys, key)
        slot.add(scope)
        if self._timer_key is None or key < self._timer_key:
            self._arm(key)

    def _remove(self, scope: DeadlineScope) -> None:
        slot = self._slots.get(scope.key)
        if slot is not None:
            slot.discard(scope)
            if not slot:
                del self._slots[scope.key]

    def _arm(self, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_key = key
        self._timer = asyncio.get_running_loop().call_at(key * self._granularity_s, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_key = None
        # uvloop's clock and timers count whole milliseconds: a timer may fire just before its time.
        now = asyncio.get_running_loop().time() + _CLOCK_RESOLUTION_S
        keys = self._keys
        while keys and keys[0] * self._granularity_s <= now:
            for scope in self._slots.pop(heapq.heappop(keys), ()):
                scope.expire()
        while keys and keys[0] not in self._slots:  # slots whose requests all ended
            heapq.heappop(keys)
        if keys:
            self._arm(keys[0])


class DeadlineScope:
    """One deadline (see :class:`Deadlines`); single use."""

    __slots__ = ("_cancelling", "_deadlines", "_state", "_task", "key", "when")

    def __init__(self, deadlines: Deadlines, when: float) -> None:
        self._deadlines = deadlines
        self.when = when
        self.key = 0
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._state = _State.WAITING

    async def __aenter__(self) -> DeadlineScope:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline scope must be used in a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._deadlines._add(self)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if self._state is _State.EXPIRING:
            self._state = _State.DONE
            assert task is not None
            if task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
                raise TimeoutError from error
            return
        self._state = _State.DONE
        self._deadlines._remove(self)

    def expire(self) -> None:
        """The deadline passed: cancel the task waiting inside the scope."""
        if self._state is _State.WAITING and self._task is not None:
            self._state = _State.EXPIRING
            self._task.cancel()
