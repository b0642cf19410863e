"""Delivering responses to Redis: every response of a round in one pipelined round trip.

Each response goes through the ``deliver`` script (docs/ARCHITECTURE.md): ``SET result NX EX`` and,
only when that SET won (the first result of a request) and the reply kind is ``stream``, ``XADD``
to the reply stream (field ``r``) and ``EXPIRE`` it. A redelivered request therefore never reaches
its client twice. The scripts run as ``EVALSHA`` in one non-transactional pipeline; when the server
does not know the script yet (``NOSCRIPT``: first use, restart, ``SCRIPT FLUSH``) it is loaded and the
pipeline is sent again, which the ``NX`` marker makes harmless.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from schemas import InferenceResponse, Names, ReplyAddress, ReplyKind
from schemas.constants import REPLY_STREAM_MAXLEN, REPLY_STREAM_TTL_S, RESULT_TTL_S

from .errors import BackendDownError

log = logging.getLogger("fleet.workers")

#: KEYS[1] result key, KEYS[2] reply stream (absent unless the reply kind is stream);
#: ARGV[1] response bytes, ARGV[2] result TTL s, ARGV[3] stream MAXLEN, ARGV[4] stream TTL s.
DELIVER_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  if #KEYS > 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'r', ARGV[1])
    redis.call('EXPIRE', KEYS[2], ARGV[4])
  end
  return 1
end
return 0
"""
DELIVER_SHA = hashlib.sha1(DELIVER_SCRIPT.encode()).hexdigest()


class ReplyWriter:
    """Stores responses under their result keys and appends them to the requesters' reply streams."""

    def __init__(self, redis: Any, names: Names) -> None:
        self._redis = redis
        self._names = names

    async def deliver(self, items: Sequence[tuple[ReplyAddress, InferenceResponse]]) -> int:
        """Deliver every response in one round trip; returns how many were first results.

        Raises BackendDownError when Redis cannot be reached: nothing may be committed then.
        """
        if not items:
            return 0
        try:
            results = await self._send(items)
            if any(isinstance(r, NoScriptError) for r in results):
                await self._redis.script_load(DELIVER_SCRIPT)
                results = await self._send(items)
        except RedisError as exc:
            raise BackendDownError(f"Redis unavailable, replies not delivered: {exc}") from exc
        delivered = 0
        for (address, response), result in zip(items, results, strict=True):
            if isinstance(result, ResponseError):
                # A reply target of the wrong type (say) cannot be fixed by retrying: report and move on.
                log.error("reply to %s for request %s failed: %s", address.target, response.id, result)
            elif result:
                delivered += 1
        return delivered

    async def _send(self, items: Sequence[tuple[ReplyAddress, InferenceResponse]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for address, response in items:
                keys = [self._names.result_key(response.id)]
                if address.kind is ReplyKind.STREAM and address.target:
                    keys.append(address.target)
                pipe.evalsha(
                    DELIVER_SHA,
                    len(keys),
                    *keys,
                    response.to_bytes(),
                    RESULT_TTL_S,
                    REPLY_STREAM_MAXLEN,
                    REPLY_STREAM_TTL_S,
                )
            return list(await pipe.execute(raise_on_error=False))
