"""Input limits the gateway applies besides the body size: HTTP header sizes and tensor element counts,
and the admission of infer requests (``Admission``: requests and body bytes in flight).

The whole list (see README "Security"): body size (``max_body_bytes``, 413), request line and header
sizes and count (aiohttp's parser, 400), input tensor elements (``max_tensor_elements``, 400; also
``schemas.constants.MAX_TENSOR_ELEMENTS``/``MAX_TENSOR_RANK`` for every tensor decoded anywhere), and
the msgpack decode limits of ``schemas.codec`` on everything read from Kafka or Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from schemas import ErrorCode, FleetError

from .errors import GatewayError, InvalidInputError, OverloadedError, PayloadTooLargeError
from .protocol import InferBody, parse_infer

#: Decode processes are replaced after this many bodies (the memory a huge body took goes with them).
_TASKS_PER_PROCESS = 100


def decode_infer(
    raw: bytes, header_length: str | None, max_elements: int, datatypes: Mapping[str, str] | None = None
) -> InferBody | tuple[str, str]:
    """``parse_infer`` plus the element limit; a domain error comes back as ``(code, message)`` (the
    gateway's exceptions do not survive pickling, and this runs in a decode process for large bodies)."""
    try:
        body = parse_infer(raw, header_length, datatypes)
        check_tensor_elements(body, max_elements)
    except FleetError as exc:
        return exc.code.value, exc.message
    return body


#: How much lower a decode process runs than its gateway: on a machine the gateway shares with the broker and
#: workers, a huge body's decoding takes the CPU that is left over, not the requests' share.
DECODE_NICENESS = 10


def decode_process_init(parent: int) -> None:
    """Initializer of a decode process: run at a lower priority (``DECODE_NICENESS``; on Linux the idle
    scheduling class, which takes only CPU time no other process wants), and exit once the
    gateway that spawned it is gone (a SIGKILLed gateway cannot shut its pool down, and its decode processes
    would otherwise wait for work forever)."""
    os.nice(DECODE_NICENESS)
    with contextlib.suppress(AttributeError, OSError):  # Linux: run only on CPU time nobody else wants
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="fleet-decode-parent-watch", daemon=True).start()


class Decoder:
    """Decodes infer bodies: small ones on the event loop, larger ones in a bounded pool of processes.

    JSON parsing of a large body holds the GIL for its whole duration (a thread would still stall the
    loop), so bodies over ``inline_bytes`` go to ``processes`` spawned processes; the admission limits
    bound how many wait for them. ``stop()`` shuts the pool down.
    """

    def __init__(self, inline_bytes: int, processes: int, max_elements: int) -> None:
        self._inline_bytes = inline_bytes
        self._processes = processes
        self._max_elements = max_elements
        self._pool: ProcessPoolExecutor | None = None
        self._stopped = False

    async def decode(
        self, raw: bytes, header_length: str | None, datatypes: Mapping[str, str] | None = None
    ) -> InferBody:
        """The parsed body; GatewayError (400s) for what does not parse (``datatypes``: see ``parse_infer``)."""
        if len(raw) <= self._inline_bytes:
            result = decode_infer(raw, header_length, self._max_elements, datatypes)
        else:
            result = await self._in_process(raw, header_length, datatypes)
        if isinstance(result, tuple):
            code, message = result
            raise GatewayError(message, code=ErrorCode(code))
        return result

    async def _in_process(
        self, raw: bytes, header_length: str | None, datatypes: Mapping[str, str] | None
    ) -> InferBody | tuple[str, str]:
        if self._stopped:
            raise GatewayError("the gateway is stopping", code=ErrorCode.BACKEND_UNAVAILABLE)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self._processes,
                mp_context=multiprocessing.get_context("spawn"),  # never fork a process with running threads
                max_tasks_per_child=_TASKS_PER_PROCESS,
                initializer=decode_process_init,
                initargs=(os.getpid(),),
            )
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, decode_infer, raw, header_length, self._max_elements, datatypes
            )
        except BrokenProcessPool:  # a decode process died (killed, out of memory): start a fresh pool next time
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False)
            raise GatewayError("a decode process died while decoding this body", code=ErrorCode.INTERNAL) from None

    async def stop(self) -> None:
        """Shut the decode processes down (idempotent)."""
        self._stopped = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)


_NO_TURN: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


class LargeBodies:
    """At most ``slots`` bodies over ``inline_bytes`` (by their Content-Length) are read and decoded at once.

    A large body waits for its turn without being read (the client's sends stall in TCP), and one that has
    waited ``wait_s`` is refused with 503 ``OVERLOADED``: a few clients sending huge bodies are served in turn
    instead of taking the event loop's reads and the CPU from every other request. A body without a
    Content-Length (chunked) is not known to be large and does not wait.
    """

    def __init__(self, slots: int, inline_bytes: int, wait_s: float) -> None:
        self._slots = slots
        self._inline_bytes = inline_bytes
        self._wait_s = wait_s
        self._turns = asyncio.Semaphore(slots)

    def turn(self, declared_bytes: int | None) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold a turn while a body of ``declared_bytes`` is read and decoded; OverloadedError after ``wait_s``."""
        if declared_bytes is None or declared_bytes <= self._inline_bytes:
            return _NO_TURN  # shared and stateless: a small body costs no generator per request
        return self._large_turn()

    @contextlib.asynccontextmanager
    async def _large_turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._wait_s):
                await self._turns.acquire()
        except TimeoutError:
            raise OverloadedError(
                f"{self._slots} large bod{'y is' if self._slots == 1 else 'ies are'} being read and decoded "
                f"(FLEET_GATEWAY_DECODE_PROCESSES={self._slots}); this one waited {self._wait_s:g} s"
            ) from None
        try:
            yield
        finally:
            self._turns.release()


class Admission:
    """Bounds the infer requests a gateway holds at once, by count and by body bytes.

    ``admit()`` runs before a body is read: a request over either bound is refused at once with
    ``OverloadedError`` (503 OVERLOADED, ``Retry-After``), so overload is shed at the door instead of
    queueing until publishes or replies time out. A body without Content-Length (chunked) is counted
    as it is read (``Ticket.grow``).
    """

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.requests = 0
        self.bytes = 0

    def check(self, declared_bytes: int | None) -> None:
        """OverloadedError when ``admit()`` would refuse now (counts nothing)."""
        self.admit(declared_bytes).release()

    def admit(self, declared_bytes: int | None) -> Ticket:
        """A ticket for one request (release it when the request is done); OverloadedError when full."""
        if self.requests >= self.max_requests:
            raise OverloadedError(
                f"{self.requests} requests in flight (FLEET_GATEWAY_MAX_IN_FLIGHT={self.max_requests})"
            )
        ticket = Ticket(self)
        ticket.grow(declared_bytes or 0)
        self.requests += 1
        return ticket


class Ticket:
    """One admitted request's share of an ``Admission``; ``release()`` is idempotent."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._bytes = 0
        self._released = False

    def grow(self, size: int) -> None:
        """Count ``size`` more body bytes; OverloadedError (and nothing counted) when over the byte bound."""
        admission = self._admission
        if size <= self._bytes:
            return
        extra = size - self._bytes
        if admission.bytes + extra > admission.max_bytes and admission.bytes:
            # A single body larger than the bound is still admitted when nothing else is in flight (the body
            # limit, not this one, decides about it), so no request can be refused forever.
            raise OverloadedError(
                f"{admission.bytes} body bytes in flight, {size} more would pass "
                f"FLEET_GATEWAY_MAX_IN_FLIGHT_BYTES={admission.max_bytes}"
            )
        admission.bytes += extra
        self._bytes = size

    def release(self) -> None:
        """Give the request's count and bytes back."""
        if self._released:
            return
        self._released = True
        self._admission.bytes -= self._bytes
        self._admission.requests -= 1


def check_declared_body(content_length: int | None, limit: int) -> None:
    """PayloadTooLargeError when a declared Content-Length is over ``limit`` (before anything is read)."""
    if content_length is not None and content_length > limit:
        raise PayloadTooLargeError("request body", content_length, limit)


def check_queued_size(size: int, limit: int, setting: str = "FLEET_GATEWAY_MAX_BODY_BYTES") -> None:
    """PayloadTooLargeError when the request as queued (raw tensors plus envelope) is over ``limit``.

    The same limit as the body's: JSON data (1-3 characters per element) can grow when it becomes raw
    tensor bytes (up to 8 per element), and the queued record must fit the Kafka record limit.
    """
    if size > limit:
        raise PayloadTooLargeError("request as queued (tensors as raw bytes plus the envelope)", size, limit, setting)


def check_tensor_elements(body: InferBody, limit: int) -> None:
    """InvalidInputError for the first input tensor with more than ``limit`` elements."""
    for tensor in body.inputs:
        count = math.prod(tensor.shape)
        if count > limit:
            raise InvalidInputError(
                tensor.name, f"{count} elements exceed the limit of {limit} (FLEET_GATEWAY_MAX_TENSOR_ELEMENTS)"
            )
