"""What a producer's requests come back as: ``ProducerResult``, and the table of requests in flight.

`PendingTable` holds each request from its send to its answer: it bounds how many are in flight
(``acquire()`` waits for a free slot: backpressure), hands each answer to the ``infer()`` waiting on it
or to the :meth:`results` iterator, keeps answers for ids not in flight in a bounded stash (a re-sent
request picks its answer up there: first answer wins), and its sweeper completes a request still
unanswered ``timeout_s`` + 1 s after it was sent with ``DEADLINE_EXCEEDED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from schemas import ErrorCode, ErrorInfo, FleetError, InferenceResponse, Names, SchemaError

Array = npt.NDArray[Any]
#: Grace after a request's own deadline before this side gives up on it.
GRACE_S = 1.0
_SWEEP_EVERY_S = 0.5
_STASH = 10_000  # answers kept for ids not in flight


class RequestFailedError(FleetError):
    """A request the fleet answered with an error (``code`` is the worker's, e.g. INVALID_INPUT)."""


@dataclass(frozen=True, slots=True)
class ProducerResult:
    """The answer to one request: numpy outputs by name, or the error the fleet gave."""

    request_id: str
    model: str
    version: str
    outputs: dict[str, Array]
    error: ErrorInfo | None = None
    batch_size: int = 0  # requests the worker ran together with this one
    queue_ms: float = 0.0  # from the request's creation to the start of its batch
    compute_ms: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the request succeeded."""
        return self.error is None

    def unwrap(self) -> dict[str, Array]:
        """The outputs, or RequestFailedError carrying the fleet's code and message."""
        if self.error is not None:
            raise RequestFailedError(f"request {self.request_id}: {self.error.message}", code=self.error.code)
        return self.outputs

    @classmethod
    def from_response(cls, response: InferenceResponse) -> ProducerResult:
        """Result view of a worker's response envelope."""
        outputs = {t.name: t.to_numpy() for t in response.outputs}
        return cls(
            response.id,
            response.model,
            response.version,
            outputs,
            response.error,
            response.batch_size,
            response.queue_ms,
            response.compute_ms,
        )

    @classmethod
    def failed(cls, request_id: str, model: str, version: str, code: ErrorCode, message: str) -> ProducerResult:
        """A result that failed on this side (not sent, or not answered in time)."""
        return cls(request_id, model, version, {}, ErrorInfo(code, message))


async def stored_results(redis: Any, names: Names, request_ids: Sequence[str]) -> dict[str, ProducerResult]:
    """Results stored under ``names.result_key`` for ``request_ids`` (one pipelined round trip of GETs: the keys
    lie in several hash slots); ids without one are left out.

    Raises what the Redis client raises.
    """
    if not request_ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for request_id in request_ids:
            pipe.get(names.result_key(request_id))
        raw = await pipe.execute()
    found: dict[str, ProducerResult] = {}
    for request_id, value in zip(request_ids, raw, strict=True):
        if value is not None:
            with contextlib.suppress(SchemaError):
                found[request_id] = ProducerResult.from_response(InferenceResponse.from_bytes(value))
    return found


@dataclass(slots=True)
class _Pending:
    model: str
    version: str
    expires: float  # clock() after which the client gives up
    future: asyncio.Future[ProducerResult] | None  # infer() waits on it; None: results() gets it


class PendingTable:
    """Requests in flight (at most ``max_in_flight``), their answers, the stash and the deadline sweeper."""

    def __init__(self, max_in_flight: int, timeout_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_in_flight < 1 or timeout_s <= 0:
            raise ValueError("max_in_flight must be >= 1 and timeout_s > 0")
        self._timeout_s = timeout_s
        self._clock = clock
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[str, _Pending] = {}
        self._stash: OrderedDict[str, ProducerResult] = OrderedDict()
        self._results: asyncio.Queue[ProducerResult | None] = asyncio.Queue()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Start the deadline sweeper."""
        if self._task is None and not self._closing.is_set():
            self._task = asyncio.create_task(self._sweep_routine(), name="fleet-producer-sweeper")

    async def stop(self, reason: str = "the producer is stopping") -> None:
        """Stop the sweeper, fail what still waits (BACKEND_UNAVAILABLE ``reason``), end :meth:`results`."""
        if self._closing.is_set():
            return
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            await task  # it watches _closing
        for request_id in list(self._pending):
            self.complete(ProducerResult.failed(request_id, "", "", ErrorCode.BACKEND_UNAVAILABLE, reason))
        self._results.put_nowait(None)

    # the table -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests added and not answered yet."""
        return len(self._pending)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._pending

    async def acquire(self) -> None:
        """Wait for a free slot (backpressure); ``add()`` it, or ``release()`` it when nothing is sent."""
        await self._slots.acquire()

    def release(self) -> None:
        """Give back a slot taken by ``acquire()`` for a request that was not added."""
        self._slots.release()

    def add(
        self, request_id: str, model: str, version: str, future: asyncio.Future[ProducerResult] | None = None
    ) -> bool:
        """Track ``request_id`` in the slot taken by ``acquire()`` until it is answered, forgotten or expires.

        True when it was answered already (its answer was stashed; a re-sent request): completed at once,
        nothing to send.
        """
        self._pending[request_id] = _Pending(model, version, self._clock() + self._timeout_s + GRACE_S, future)
        stashed = self._stash.pop(request_id, None)
        if stashed is not None:  # first result wins
            self.complete(stashed)
            return True
        return False

    def forget(self, request_id: str) -> None:
        """Stop tracking ``request_id`` and free its slot (nobody will read an answer to it here)."""
        if self._pending.pop(request_id, None) is not None:
            self._slots.release()

    def fail(self, request_id: str, code: ErrorCode, message: str) -> None:
        """Complete ``request_id``, if still in flight, with an error of this side."""
        if request_id in self._pending:
            self.complete(ProducerResult.failed(request_id, "", "", code, message))

    def complete(self, result: ProducerResult) -> None:
        """Hand ``result`` to its waiter (or stash it when nobody waits) and free its slot."""
        pending = self._pending.pop(result.request_id, None)
        if pending is None:
            self._stash[result.request_id] = result
            if len(self._stash) > _STASH:
                self._stash.popitem(last=False)
            return
        self._slots.release()
        if not result.model:  # failed before anyone answered: fill in what the request was
            result = ProducerResult(result.request_id, pending.model, pending.version, {}, result.error)
        if pending.future is not None:
            if not pending.future.done():
                pending.future.set_result(result)
        else:
            self._results.put_nowait(result)

    async def results(self, count: int | None = None) -> AsyncIterator[ProducerResult]:
        """Results of requests added without a future, as they arrive; ends after ``count`` or on stop."""
        received = 0
        while count is None or received < count:
            item = await self._results.get()
            if item is None:
                self._results.put_nowait(None)  # later iterators end too
                return
            received += 1
            yield item

    # deadlines -------------------------------------------------------------------
    def sweep(self) -> int:
        """Complete every request past its deadline with DEADLINE_EXCEEDED; returns how many."""
        now = self._clock()
        expired = [rid for rid, p in self._pending.items() if p.expires <= now]
        message = f"no answer within {self._timeout_s:g} s (is a worker serving the model?)"
        for request_id in expired:
            self.fail(request_id, ErrorCode.DEADLINE_EXCEEDED, message)
        return len(expired)

    async def _sweep_routine(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SWEEP_EVERY_S):
                    await self._closing.wait()
            self.sweep()
