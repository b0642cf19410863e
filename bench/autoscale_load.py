"""Open-loop HTTP load for the autoscaling benchmark: requests leave at a target rate whatever the answers do.

A closed loop slows down when the fleet does, which hides a backlog; an open loop keeps sending, so a lag
builds up and the autoscaler has something to react to. In-flight requests are bounded (a semaphore):
past the bound the generator waits, and every send that had to wait is counted as ``throttled``.

Each request carries its own id (``"id"`` in the body); the answer is checked against the expected output
of its input, and the gateway's wire id (the ``X-Request-Id`` reply header, used for Redis keys and the
reply stream) is kept so results can be matched with what the workers delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import numpy as np
import numpy.typing as npt

from fleet.client import TIMEOUT_HEADER
from fleet.client.wire import HEADER_LENGTH, decode_response, encode_request

#: Seconds the client waits beyond the deadline it gives the gateway (so the gateway's 504 arrives first).
_GRACE_S = 2.0

RateFn = Callable[[float], float]


@dataclass
class Outcome:
    """One request as the client saw it."""

    client_id: str
    #: Monotonic send and answer times (seconds).
    sent: float
    done: float = 0.0
    #: HTTP status; 0 when no HTTP answer came (transport error or client timeout).
    status: int = 0
    wire_id: str = ""
    error: str = ""
    #: The outputs match the expected outputs of the input that was sent.
    correct: bool = False
    #: Id of the worker that answered (the ``worker`` response parameter).
    worker: str = ""
    #: Epoch seconds when the answer arrived at the client (0 without one).
    answered_wall: float = 0.0


class OpenLoop:
    """Sends infer requests at ``rate(t)`` requests/s (``t``: seconds since `run` began)."""

    def __init__(
        self,
        url: str,
        model: str,
        inputs: list[npt.NDArray[np.float32]],
        expected: list[npt.NDArray[np.float32]],
        *,
        prefix: str,
        timeout_s: float = 30.0,
        max_in_flight: int = 1000,
    ) -> None:
        self.endpoint = f"{url}/v2/models/{model}/infer"
        self.inputs = inputs
        self.expected = expected
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.outcomes: list[Outcome] = []
        self.throttled = 0
        self.answered = 0
        self.failed = 0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_id: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._max_in_flight = max_in_flight

    @property
    def sent(self) -> int:
        """Requests sent so far."""
        return len(self.outcomes)

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._tasks)

    async def __aenter__(self) -> OpenLoop:
        connector = aiohttp.TCPConnector(limit=self._max_in_flight + 8)
        self._session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel what is still in flight (counted as failed) and close the connection pool."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def run(self, rate: RateFn, duration_s: float) -> None:
        """Send at ``rate`` for ``duration_s`` seconds; returns when sending stops (answers may be pending)."""
        began = time.monotonic()
        due = began
        while True:
            now = time.monotonic()
            if now - began >= duration_s:
                return
            r = rate(now - began)
            if r <= 0.01:
                due = now + 0.05
                await asyncio.sleep(0.05)
                continue
            if due > now:
                await asyncio.sleep(due - now)
            await self.send()
            due += 1.0 / r

    async def send(self) -> Outcome:
        """Start one request (waiting for a free slot when at the in-flight bound); returns its record."""
        if self._slots.locked():
            self.throttled += 1
        await self._slots.acquire()
        index = len(self.outcomes)
        outcome = Outcome(f"{self.prefix}-{index}", time.monotonic())
        self.outcomes.append(outcome)
        task = asyncio.create_task(self._request(outcome, index % len(self.inputs)), name=outcome.client_id)
        self._tasks.add(task)
        self._by_id[outcome.client_id] = task
        task.add_done_callback(self._forget)
        return outcome

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._by_id.pop(task.get_name(), None)

    async def wait(self, outcome: Outcome) -> None:
        """Wait until ``outcome`` has its answer (or failure)."""
        task = self._by_id.get(outcome.client_id)
        if task is not None:
            await asyncio.wait({task})

    async def drain(self, timeout_s: float) -> bool:
        """Wait for every request in flight; False if some are still pending after ``timeout_s``."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        return not self._tasks

    async def _request(self, outcome: Outcome, which: int) -> None:
        assert self._session is not None
        body, headers = encode_request({"x": self.inputs[which]}, request_id=outcome.client_id)
        headers[TIMEOUT_HEADER] = str(int(self.timeout_s * 1000))
        limit = aiohttp.ClientTimeout(total=self.timeout_s + _GRACE_S)
        try:
            async with self._session.post(self.endpoint, data=body, headers=headers, timeout=limit) as response:
                raw = await response.read()
                outcome.status = response.status
                outcome.wire_id = response.headers.get("X-Request-Id", "")
                length = response.headers.get(HEADER_LENGTH)
            if outcome.status == 200:
                meta, arrays = decode_response(raw, int(length) if length is not None else None)
                parameters = meta.get("parameters") or {}
                outcome.worker = str(parameters.get("worker", ""))
                outcome.correct = meta.get("id") == outcome.client_id and bool(
                    np.allclose(arrays["y"], self.expected[which], rtol=1e-3, atol=1e-4)
                )
            else:
                outcome.error = raw[:200].decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            outcome.error = "cancelled (benchmark stopping)"
            raise
        finally:
            outcome.done = time.monotonic()
            outcome.answered_wall = time.time() if outcome.status else 0.0
            if outcome.status == 200 and outcome.correct:
                self.answered += 1
            else:
                self.failed += 1
            self._slots.release()


def step_rate(high: float, start_s: float, stop_s: float) -> RateFn:
    """``high`` requests/s between ``start_s`` and ``stop_s``, nothing outside (pure)."""
    return lambda t: high if start_s <= t < stop_s else 0.0


def sine_rate(mean: float, amplitude: float, period_s: float) -> RateFn:
    """``mean + amplitude * sin(2 pi t / period)``, never below 0 (pure)."""
    return lambda t: max(0.0, mean + amplitude * float(np.sin(2.0 * np.pi * t / period_s)))
