"""The reply listener: one task per gateway reading its Redis reply stream and waking the waiting requests.

Workers ``XADD`` each response (field ``r``) to ``names.reply_stream(gateway_id)``. One routine reads
that stream with ``XREAD BLOCK`` over a dedicated connection and resolves the future registered for
the response's request id. Ids nobody waits for (late, duplicate, from a previous process) are
dropped. After a Redis error the routine reconnects with backoff and continues from the last id it
saw, so no reply written in between is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas import InferenceResponse, RedisSettings, SchemaError

from .errors import BackendDownError

log = logging.getLogger("fleet.gateway")

_READ_COUNT = 1000
_TRIM_EVERY = 1000  # entries read between two trims of the stream
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0


class ReplyListener:
    """Resolves ``asyncio.Future``s keyed by request id from the entries of one reply stream."""

    def __init__(self, redis: RedisSettings, stream: str) -> None:
        self._settings = redis
        self._stream = stream
        # XREAD must return before the socket timeout, or an idle stream would look like a dead server.
        self._block_ms = max(10, int(redis.socket_timeout_s * 500))
        self._waiting: dict[str, asyncio.Future[InferenceResponse]] = {}
        self._idle = asyncio.Event()  # set while nothing waits
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._client: aioredis.Redis | None = None
        self._last_id: str | None = None  # None until the starting position is known
        self._healthy = False
        self._last_error = "not connected yet"
        self._since_trim = 0
        self._closing = False

    @property
    def stream(self) -> str:
        """The stream key this listener reads."""
        return self._stream

    @property
    def healthy(self) -> bool:
        """True while the last Redis call of the routine succeeded (replies can be received)."""
        return self._healthy

    @property
    def last_error(self) -> str:
        """Why the listener is not healthy."""
        return self._last_error

    @property
    def waiting(self) -> int:
        """Number of requests waiting for a reply."""
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

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request waits for a reply; False when some still do after ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return not self._waiting

    def fail_waiting(self, reason: str) -> int:
        """Answer every request still waiting with 503 ``reason``; returns how many there were."""
        failed = 0
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(BackendDownError("redis", reason))
                failed += 1
        self._waiting.clear()
        self._idle.set()
        return failed

    async def start(self) -> None:
        """Start the listening routine; returns at once (it connects in the background)."""
        if self._task is None:
            self._client = self._settings.client()
            self._task = asyncio.create_task(self._listen_routine(), name="fleet-gateway-replies")

    async def stop(self, *, delete_stream: bool = True) -> None:
        """Stop listening, fail the requests still waiting, drop the stream; idempotent."""
        task, self._task = self._task, None
        self._closing = True
        if task is not None:
            task.cancel()
            # redis-py can swallow a cancellation that lands mid-command (seen on Python 3.11); the
            # routine then notices _closing within one XREAD block, so the wait is bounded either way.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(self._block_ms / 1000 + self._settings.socket_timeout_s + 1.0):
                    await asyncio.shield(task)
            if not task.done():
                log.warning("reply listener did not stop in time", extra={"stream": self._stream})
        self._healthy = False
        self.fail_waiting("the gateway is stopping")
        client, self._client = self._client, None
        if client is not None:
            if delete_stream:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(self._settings.socket_timeout_s):
                        await client.delete(self._stream)
            await client.aclose()

    async def _listen_routine(self) -> None:
        assert self._client is not None
        client = self._client
        backoff = _BACKOFF_MIN_S
        while not self._closing:
            try:
                if self._last_id is None:
                    self._last_id = await self._tail_id(client)
                    log.info("listening for replies", extra={"stream": self._stream})
                elif not self._healthy:
                    await client.ping()  # healthy again only once a round trip works
                self._healthy = True
                entries = await client.xread({self._stream: self._last_id}, count=_READ_COUNT, block=self._block_ms)
                backoff = _BACKOFF_MIN_S
                self._dispatch(entries)
                if self._since_trim >= _TRIM_EVERY:
                    # Entries before the last one read are consumed: keep the stream short.
                    await client.xtrim(self._stream, minid=self._last_id, approximate=True)
                    self._since_trim = 0
            except (RedisError, OSError, TimeoutError) as exc:
                if self._healthy or backoff == _BACKOFF_MIN_S:
                    log.warning("reply stream unreadable, reconnecting", extra={"error": str(exc)})
                self._mark_down(f"cannot read replies from Redis: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            except Exception as exc:  # a bug must not leave requests waiting on a dead routine
                log.exception("reply listener failed, restarting it", extra={"stream": self._stream})
                self._mark_down(f"reply listener failed: {type(exc).__name__}: {exc}")
                await asyncio.sleep(_BACKOFF_MAX_S)

    def _mark_down(self, reason: str) -> None:
        self._healthy = False
        self._last_error = reason

    async def _tail_id(self, client: aioredis.Redis) -> str:
        """The id of the newest entry already in the stream: replies after it are new."""
        newest: Any = await client.xrevrange(self._stream, count=1)
        if not newest:
            return "0-0"
        return _text(newest[0][0])

    def _dispatch(self, entries: Any) -> None:
        # RESP2 (the client's protocol): [[stream, [(id, {field: value}), ...]]] or [] after the block.
        batches = [entry for _, stream_entries in entries or () for entry in stream_entries]
        for entry_id, fields in batches:
            self._last_id = _text(entry_id)
            self._since_trim += 1
            self._resolve(fields.get(b"r") if isinstance(fields, dict) else None)

    def _resolve(self, raw: Any) -> None:
        if not isinstance(raw, bytes):
            log.warning("reply entry without field 'r' dropped", extra={"stream": self._stream})
            return
        try:
            response = InferenceResponse.from_bytes(raw)
        except SchemaError as exc:
            log.warning("undecodable reply dropped", extra={"stream": self._stream, "error": exc.message})
            return
        future = self._waiting.pop(response.id, None)
        if future is None or future.done():
            log.debug("reply nobody waits for dropped", extra={"request_id": response.id})
            return
        future.set_result(response)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
