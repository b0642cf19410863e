"""The one reader of a Redis reply stream, shared by the gateway and the direct producer client.

Workers ``XADD`` each response (field ``r``) to the reply stream its request named: a gateway's
(``names.reply_stream``) or a producer client's (``names.client_reply_stream``). `ReplyStream` reads that
stream with ``XREAD BLOCK`` over a dedicated connection (no per-request polling), decodes each entry and
hands the ``InferenceResponse`` to a callback (an entry with field ``rb``, a reply list, hands on each of its
responses in order: workers write one only to a reader whose requests said it reads them). After a Redis
error it reconnects with backoff and carries on from the last id it saw, so no reply written in between is
lost; ``healthy``/``last_error`` say whether replies can be received now. Entries already read are trimmed
from time to time. `ReplyWaiters` is such a callback: futures by request id, for callers that wait on one reply each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import InferenceResponse, RedisSettings, SchemaError
from schemas.envelopes import unpack_responses

from .backoff import Backoff, BackoffPolicy, pause
from .text import text

log = logging.getLogger("fleet.common")

#: Pause after a failed read: doubles from 50 ms up to 2 s while Redis stays unreachable.
READ_BACKOFF = BackoffPolicy(first_s=0.05, max_s=2.0)

OnReply = Callable[[InferenceResponse], None]
#: Called with the raw value of an entry's field ``c`` (a generation stream chunk, ``schemas.generation``).
OnChunk = Callable[[bytes], None]


class ReplyStream:
    """Reads one reply stream in a background routine and calls ``on_reply`` with each decoded response.

    ``read_count`` entries at most per XREAD; the stream is trimmed up to the last id read every
    ``trim_every`` entries. Undecodable entries are logged and skipped. ``start()`` once, ``stop()``
    (idempotent) when done; without a ``seek_tail()`` first, reading starts after the entries that are
    in the stream when the routine first reaches Redis.
    """

    def __init__(
        self,
        redis: RedisSettings,
        stream: str,
        on_reply: OnReply,
        *,
        read_count: int = 1000,
        trim_every: int = 1000,
        backoff: BackoffPolicy = READ_BACKOFF,
        logger: logging.Logger = log,
        on_chunk: OnChunk | None = None,
    ) -> None:
        self._settings = redis
        self._on_chunk = on_chunk
        self._stream = stream
        self._on_reply = on_reply
        self._read_count = read_count
        self._trim_every = trim_every
        self._backoff = backoff
        self._log = logger
        # XREAD must return before the socket timeout, or an idle stream would look like a dead server.
        self._block_ms = max(10, int(redis.socket_timeout_s * 500))
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._last_id: str | None = None  # None until the starting position is known
        self._healthy = False
        self._last_error = "not connected yet"
        self._since_trim = 0

    @property
    def stream(self) -> str:
        """The stream key this reader reads."""
        return self._stream

    @property
    def healthy(self) -> bool:
        """True while the last Redis call of the routine succeeded (replies can be received)."""
        return self._healthy

    @property
    def last_error(self) -> str:
        """Why the reader is not healthy."""
        return self._last_error

    @property
    def stop_timeout_s(self) -> float:
        """Longest ``stop()`` waits for the routine: one XREAD block plus one Redis command, and a margin."""
        return self._block_ms / 1000 + self._settings.socket_timeout_s + 1.0

    def _connect(self) -> aioredis.Redis:
        if self._client is None:
            self._client = self._settings.client()
        return self._client

    async def seek_tail(self) -> None:
        """Read from the newest entry in the stream now: every reply written after this call is received.

        Raises what the Redis client raises (``RedisError``, ``OSError``, ``TimeoutError``).
        """
        self._last_id = await self._tail_id(self._connect())

    async def start(self) -> None:
        """Start the reading routine; returns at once (it connects in the background)."""
        if self._closing.is_set():
            raise RuntimeError(f"the reader of {self._stream} was stopped; a ReplyStream starts once")
        if self._task is None:
            client = self._connect()
            self._task = asyncio.create_task(self._read_routine(client), name=f"fleet-replies-{self._stream}")

    async def stop(self, *, delete_stream: bool = True) -> None:
        """``halt()`` then ``close()``: stop reading, drop the stream (``delete_stream``), close; idempotent."""
        await self.halt()
        await self.close(delete_stream=delete_stream)

    async def halt(self) -> None:
        """Stop the reading routine (no reply is handed on after this returns); idempotent."""
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # redis-py can swallow a cancellation that lands mid-command (seen on Python 3.11); the
            # routine then notices _closing within one XREAD block, so the wait is bounded either way.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(self.stop_timeout_s):
                    await asyncio.shield(task)
            if not task.done():
                self._log.warning("reply reader of %s did not stop in time", self._stream)
        self._healthy = False

    async def close(self, *, delete_stream: bool = True) -> None:
        """Delete the stream (when ``delete_stream``; best effort) and close the connection; idempotent."""
        client, self._client = self._client, None
        if client is None:
            return
        if delete_stream:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self._settings.socket_timeout_s):
                    await client.delete(self._stream)
        await client.aclose()

    async def _read_routine(self, client: aioredis.Redis) -> None:
        backoff = Backoff(self._backoff)
        while not self._closing.is_set():
            try:
                if self._last_id is None:
                    self._last_id = await self._tail_id(client)
                    self._log.info("listening for replies on %s", self._stream, extra={"stream": self._stream})
                elif not self._healthy:
                    await client.ping()  # healthy again only once a round trip works
                self._healthy = True
                entries = await client.xread(
                    {self._stream: self._last_id}, count=self._read_count, block=self._block_ms
                )
                backoff.reset()
                self._dispatch(entries)
                if self._since_trim >= self._trim_every:
                    # Entries up to the last one read are consumed: keep the stream short.
                    await client.xtrim(self._stream, minid=self._last_id, approximate=True)
                    self._since_trim = 0
            except (RedisError, OSError, TimeoutError) as exc:
                if self._healthy or backoff.failures == 0:  # the first failure of an outage, not every retry
                    self._log.warning(
                        "reply stream %s unreadable (%s), reconnecting",
                        self._stream,
                        exc,
                        extra={"stream": self._stream, "error": str(exc)},
                    )
                self._mark_down(f"cannot read replies from Redis: {exc}")
                await backoff.sleep(self._closing)
            except Exception as exc:  # a bug must not leave requests waiting on a dead routine
                self._log.exception("reply reader of %s failed, restarting it", self._stream)
                self._mark_down(f"reply reader failed: {type(exc).__name__}: {exc}")
                await pause(self._backoff.max_s, self._closing)

    def _mark_down(self, reason: str) -> None:
        self._healthy = False
        self._last_error = reason

    async def _tail_id(self, client: aioredis.Redis) -> str:
        """The id of the newest entry already in the stream: replies after it are new."""
        newest: Any = await client.xrevrange(self._stream, count=1)
        return text(newest[0][0]) if newest else "0-0"

    def _dispatch(self, entries: Any) -> None:
        # RESP2 (the client's protocol): [[stream, [(id, {field: value}), ...]]] or [] after the block.
        for _, stream_entries in entries or ():
            for entry_id, fields in stream_entries:
                self._last_id = text(entry_id)
                self._since_trim += 1
                if self._on_chunk is not None and isinstance(fields, dict) and b"c" in fields:
                    self._on_chunk(fields[b"c"])
                    continue
                if isinstance(fields, dict) and b"rb" in fields:
                    for listed in self._decode_list(fields[b"rb"]):
                        self._on_reply(listed)
                    continue
                response = self._decode(fields.get(b"r") if isinstance(fields, dict) else None)
                if response is not None:
                    self._on_reply(response)

    def _decode_list(self, raw: Any) -> list[InferenceResponse]:
        """The responses of a reply list (field ``rb``); undecodable ones are logged and skipped."""
        try:
            if not isinstance(raw, bytes):
                raise SchemaError("field 'rb' must be bytes")
            responses, errors = unpack_responses(raw)
        except SchemaError as exc:
            self._log.warning(
                "undecodable reply list dropped from %s: %s", self._stream, exc.message, extra={"error": exc.message}
            )
            return []
        for error in errors:
            self._log.warning(
                "undecodable reply dropped from a list in %s: %s",
                self._stream,
                error.message,
                extra={"error": error.message},
            )
        return responses

    def _decode(self, raw: Any) -> InferenceResponse | None:
        if not isinstance(raw, bytes):
            self._log.warning("reply entry without field 'r' dropped from %s", self._stream)
            return None
        try:
            return InferenceResponse.from_bytes(raw)
        except SchemaError as exc:
            self._log.warning(
                "undecodable reply dropped from %s: %s", self._stream, exc.message, extra={"error": exc.message}
            )
            return None


class ReplyWaiters:
    """Futures of the requests waiting for their reply, by request id; ``resolve`` is a ReplyStream callback."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[InferenceResponse]] = {}
        self._idle = asyncio.Event()  # set while nothing waits
        self._idle.set()

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, request_id: str) -> asyncio.Future[InferenceResponse]:
        """Register interest in ``request_id`` (before publishing the request, so no reply can be missed)."""
        future: asyncio.Future[InferenceResponse] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._idle.clear()
        return future

    def discard(self, request_id: str) -> None:
        """Stop waiting for ``request_id`` (answered, timed out or abandoned)."""
        self._waiting.pop(request_id, None)
        if not self._waiting:
            self._idle.set()

    def resolve(self, response: InferenceResponse) -> None:
        """Wake the request ``response`` answers; a reply nobody waits for (late, duplicate) is dropped."""
        future = self._waiting.pop(response.id, None)
        if future is None or future.done():
            log.debug("reply nobody waits for dropped", extra={"request_id": response.id})
            return
        future.set_result(response)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request waits for a reply; False when some still do after ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return not self._waiting

    def fail(self, error: Callable[[], BaseException]) -> int:
        """Fail every request still waiting with a fresh ``error()``; returns how many there were."""
        failed = 0
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error())
                failed += 1
        self._waiting.clear()
        self._idle.set()
        return failed
