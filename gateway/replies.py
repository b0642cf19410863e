"""The reply listener: one task per gateway reading its Redis reply stream and waking the waiting requests.

Workers ``XADD`` each response (field ``r``), or a round's responses to this gateway as one reply list
(field ``rb``, when the requests said the gateway reads lists), to ``names.reply_stream(gateway_id)``. A
:class:`common.reply_stream.ReplyStream` reads that stream with ``XREAD BLOCK`` over a dedicated connection
and resolves the future registered for each response's request id. Ids nobody waits for (late, duplicate,
from a previous process) are dropped. After a Redis error the reader reconnects with backoff and continues
from the last id it saw, so no reply written in between is lost.
"""

from __future__ import annotations

import asyncio
import logging

from common.reply_stream import ReplyStream, ReplyWaiters
from schemas import InferenceResponse, RedisSettings, SchemaError
from schemas.generation import StreamChunk

from .errors import BackendDownError

log = logging.getLogger("fleet.gateway")

_READ_COUNT = 1000
_TRIM_EVERY = 1000  # entries read between two trims of the stream


class ReplyListener:
    """Resolves ``asyncio.Future``s keyed by request id from the entries of one reply stream."""

    def __init__(self, redis: RedisSettings, stream: str) -> None:
        self._waiters = ReplyWaiters()
        #: Requests that take stream chunks (generation): their chunks, in the order read.
        self._chunks: dict[str, asyncio.Queue[StreamChunk]] = {}
        self._reader = ReplyStream(
            redis,
            stream,
            self._waiters.resolve,
            read_count=_READ_COUNT,
            trim_every=_TRIM_EVERY,
            logger=log,
            on_chunk=self._chunk,
        )

    @property
    def stream(self) -> str:
        """The stream key this listener reads."""
        return self._reader.stream

    @property
    def healthy(self) -> bool:
        """True while the last Redis call of the routine succeeded (replies can be received)."""
        return self._reader.healthy

    @property
    def last_error(self) -> str:
        """Why the listener is not healthy."""
        return self._reader.last_error

    @property
    def waiting(self) -> int:
        """Number of requests waiting for a reply."""
        return len(self._waiters)

    def expect(self, request_id: str) -> asyncio.Future[InferenceResponse]:
        """Register interest in ``request_id`` (before publishing the request, so no reply can be missed)."""
        return self._waiters.expect(request_id)

    def discard(self, request_id: str) -> None:
        """Stop waiting for ``request_id`` (answered, timed out or abandoned)."""
        self._waiters.discard(request_id)
        self._chunks.pop(request_id, None)

    def expect_chunks(self, request_id: str) -> asyncio.Queue[StreamChunk]:
        """The queue that receives ``request_id``'s stream chunks (until ``discard``); call before publishing."""
        queue: asyncio.Queue[StreamChunk] = asyncio.Queue()
        self._chunks[request_id] = queue
        return queue

    def _chunk(self, raw: bytes) -> None:
        try:
            chunk = StreamChunk.from_bytes(raw)
        except SchemaError as exc:
            log.warning("undecodable stream chunk dropped from %s: %s", self.stream, exc.message)
            return
        queue = self._chunks.get(chunk.id)
        if queue is not None:
            queue.put_nowait(chunk)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request waits for a reply; False when some still do after ``timeout_s``."""
        return await self._waiters.wait_idle(timeout_s)

    def fail_waiting(self, reason: str) -> int:
        """Answer every request still waiting with 503 ``reason``; returns how many there were."""
        return self._waiters.fail(lambda: BackendDownError("redis", reason))

    async def start(self) -> None:
        """Start the listening routine; returns at once (it connects in the background)."""
        await self._reader.start()

    async def stop(self, *, delete_stream: bool = True) -> None:
        """Stop listening, fail the requests still waiting, drop the stream; idempotent."""
        await self._reader.halt()
        self.fail_waiting("the gateway is stopping")
        await self._reader.close(delete_stream=delete_stream)
