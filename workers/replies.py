"""Delivering responses to Redis: every response of a round in one pipelined round trip.

Each response goes through the ``deliver`` script (docs/ARCHITECTURE.md): ``SET result NX EX`` and,
only when that SET won (the first result of a request) and the reply kind is ``stream``, ``XADD``
to the reply stream (field ``r``) and ``EXPIRE`` it; for kind ``result`` (an async job) whose job
hash names a webhook, ``XADD`` the job id to the callbacks stream. A redelivered request therefore never reaches
its client twice. The scripts run as ``EVALSHA`` in one non-transactional pipeline; when the server
does not know the script yet (``NOSCRIPT``: first use, restart, ``SCRIPT FLUSH``) it is loaded and the
pipeline is sent again, which the ``NX`` marker makes harmless.

Reply kind ``topic`` (streaming pipelines) goes through the ``deliver_topic`` script instead, in the
same pipeline: ``SET result NX EX``, returning 1 when that SET won, else the result already stored.
The script returns 1 when that SET won, 0 when the stored result was already produced (the
``emitted`` marker exists), else the stored first result. The worker produces **the first stored
result** (its own when it won) to the named topic, key = request id, waits for the broker's acks, then
sets the ``emitted`` markers (one more pipelined round trip, only for rounds with topic replies) before
the round is committed. A failed produce fails the delivery (nothing is committed; the round is retried
or redelivered, and the stored first result is produced again). So a topic never loses a result and
never carries two *different* results for one request; a redelivered request is not emitted twice;
only a crash between the broker's ack and the marker can repeat the same record, which consumers drop
by key (request id).

The result key is kept ``max(RESULT_TTL_S, reply.ttl_s)`` seconds: async jobs ask for at least their TTL.

A per-command error is permanent only when retrying cannot fix it (``WRONGTYPE``: a reply target of the
wrong type): it is logged and the round goes on. Server states that pass (``OOM`` under ``maxmemory`` with
``noeviction``, ``READONLY`` after a failover, cluster redirects, ``LOADING``, ``BUSY`` ...) fail the
delivery with BackendDownError, so nothing is committed and the reply is delivered on a later try.
``deliver_some`` reports which replies such an error left undelivered, so a retry sends only those.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from schemas import ENVELOPE_VERSION, InferenceResponse, Names, ReplyAddress, ReplyKind
from schemas.constants import (
    HEADER_ENVELOPE_VERSION,
    HEADER_REQUEST_ID,
    REPLY_STREAM_MAXLEN,
    REPLY_STREAM_TTL_S,
    RESULT_TTL_S,
)
from schemas.jobs import CALLBACK_FIELD, CALLBACK_STREAM_MAXLEN, F_CALLBACK

from .errors import BackendDownError

log = logging.getLogger("fleet.workers")

#: KEYS[1] result key; kind stream: KEYS[2] reply stream; kind result (async job): KEYS[2] job hash,
#: KEYS[3] callbacks stream. ARGV[1] response bytes, ARGV[2] result TTL s, ARGV[3] stream MAXLEN,
#: ARGV[4] stream TTL s, ARGV[5] reply kind, ARGV[6] request id. A first result of a job whose hash
#: names a webhook is announced on the callbacks stream (``schemas.jobs``).
DELIVER_SCRIPT = f"""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  if ARGV[5] == 'stream' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'r', ARGV[1])
    redis.call('EXPIRE', KEYS[2], ARGV[4])
  elseif ARGV[5] == 'result' and redis.call('HEXISTS', KEYS[2], '{F_CALLBACK}') == 1 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', {CALLBACK_STREAM_MAXLEN}, '*', '{CALLBACK_FIELD}', ARGV[6])
  end
  return 1
end
return 0
"""
DELIVER_SHA = hashlib.sha1(DELIVER_SCRIPT.encode()).hexdigest()
#: KEYS[1] result key, KEYS[2] emitted marker; ARGV[1] response bytes, ARGV[2] result TTL s.
#: 1 when the SET won, 0 when the stored result was produced already, else the stored first result.
DELIVER_TOPIC_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 1
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
return redis.call('GET', KEYS[1])
"""
DELIVER_TOPIC_SHA = hashlib.sha1(DELIVER_TOPIC_SCRIPT.encode()).hexdigest()
_VERSION_HEADER = (HEADER_ENVELOPE_VERSION, str(ENVELOPE_VERSION).encode())
#: Redis error codes a later try gets past: memory full (``noeviction``), a replica after a failover, cluster
#: redirects and resharding, a server loading its data set or busy with a script, a failing disk or replica.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "OOM",
        "READONLY",
        "LOADING",
        "BUSY",
        "TRYAGAIN",
        "MOVED",
        "ASK",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "NOREPLICAS",
        "MISCONF",
        "NOSCRIPT",
    }
)
_CODE_IN_SCRIPT_ERROR = re.compile(r"(?:^|[\s:-])(" + "|".join(sorted(TRANSIENT_ERROR_CODES)) + r")\b")


def is_transient(error: ResponseError) -> bool:
    """True when a command's error reply names a server state that passes (retry), not a wrong command."""
    code = getattr(error, "status_code", None) or str(error).split(" ", 1)[0]
    if code in TRANSIENT_ERROR_CODES:
        return True
    # Older servers wrap an error raised inside a script: "ERR Error running script ... -OOM command not allowed".
    return code == "ERR" and "script" in str(error) and _CODE_IN_SCRIPT_ERROR.search(str(error)) is not None


Reply = tuple[ReplyAddress, InferenceResponse]


@dataclass
class DeliveryReport:
    """What one delivery did: first results stored, and the replies a passing Redis error left undelivered."""

    first: int = 0
    pending: list[Reply] = field(default_factory=list)
    #: The first of those errors (for the log line).
    error: str = ""


class ReplyWriter:
    """Stores responses under their result keys, appends them to reply streams, produces topic replies."""

    def __init__(self, redis: Any, names: Names, producer: Any = None) -> None:
        self._redis = redis
        self._names = names
        self._producer = producer  # AIOKafkaProducer for reply kind ``topic`` (None: such replies only log)

    async def deliver(self, items: Sequence[Reply]) -> int:
        """Deliver every response in one Redis round trip (then the topic replies); how many were first results.

        Raises BackendDownError when Redis or Kafka cannot be reached, or Redis refuses a reply for now
        (out of memory, read-only, ...): nothing may be committed then.
        """
        report = await self.deliver_some(items)
        if report.pending:
            raise BackendDownError(
                f"Redis refused {len(report.pending)} of {len(items)} replies for now, not delivered: {report.error}"
            )
        return report.first

    async def deliver_some(self, items: Sequence[Reply]) -> DeliveryReport:
        """Deliver what Redis takes now; the report lists the replies to deliver again (a passing server error).

        Raises BackendDownError when Redis or Kafka cannot be reached (deliver every item again then:
        the result markers make a second delivery of the ones that got through harmless).
        """
        report = DeliveryReport()
        if not items:
            return report
        try:
            results = await self._send(items)
            if any(isinstance(r, NoScriptError) for r in results):
                await self._redis.script_load(DELIVER_SCRIPT)
                await self._redis.script_load(DELIVER_TOPIC_SCRIPT)
                results = await self._send(items)
        except RedisError as exc:
            raise BackendDownError(f"Redis unavailable, replies not delivered: {exc}") from exc
        emits: list[tuple[str, str, bytes]] = []
        emitting: set[str] = set()
        for (address, response), result in zip(items, results, strict=True):
            if isinstance(result, ResponseError):
                if is_transient(result):
                    report.pending.append((address, response))
                    report.error = report.error or f"{getattr(result, 'status_code', None) or ''} {result}".strip()
                    continue
                # A reply target of the wrong type (say) cannot be fixed by retrying: report and move on.
                log.error("reply to %s for request %s failed: %s", address.target, response.id, result)
                continue
            first = result == 1
            if address.kind is ReplyKind.TOPIC and (first or isinstance(result, bytes)) and response.id not in emitting:
                # Emit the first stored result: ours when we won, else the one stored but not yet produced
                # (once per round, even when the round holds the request twice).
                emitting.add(response.id)
                emits.append((address.target, response.id, response.to_bytes() if first else result))
            if first:
                report.first += 1
        if emits:
            await self._emit(emits)
            await self._mark_emitted([request_id for _, request_id, _ in emits], items)
        return report

    async def _mark_emitted(self, request_ids: Sequence[str], items: Sequence[Reply]) -> None:
        ttl = {response.id: max(RESULT_TTL_S, address.ttl_s) for address, response in items}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for request_id in request_ids:
                    pipe.set(self._names.emitted_key(request_id), b"1", ex=ttl[request_id])
                await pipe.execute()
        except RedisError as exc:
            # Not committed: the retry produces the same stored results again (duplicates by key).
            raise BackendDownError(f"Redis unavailable, topic replies not marked: {exc}") from exc

    async def _send(self, items: Sequence[Reply]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for address, response in items:
                result_key = self._names.result_key(response.id)
                ttl = max(RESULT_TTL_S, address.ttl_s)
                if address.kind is ReplyKind.TOPIC:
                    emitted = self._names.emitted_key(response.id)
                    pipe.evalsha(DELIVER_TOPIC_SHA, 2, result_key, emitted, response.to_bytes(), ttl)
                    continue
                keys = [result_key]
                kind = address.kind.value
                if address.kind is ReplyKind.STREAM and address.target:
                    keys.append(address.target)
                elif address.kind is ReplyKind.RESULT:
                    keys += [self._names.job_key(response.id), self._names.callbacks_stream]
                else:
                    kind = ReplyKind.NONE.value
                pipe.evalsha(
                    DELIVER_SHA,
                    len(keys),
                    *keys,
                    response.to_bytes(),
                    ttl,
                    REPLY_STREAM_MAXLEN,
                    REPLY_STREAM_TTL_S,
                    kind,
                    response.id,
                )
            return list(await pipe.execute(raise_on_error=False))

    async def _emit(self, emits: Sequence[tuple[str, str, bytes]]) -> None:
        """Produce topic replies and wait for the acks; BackendDownError when Kafka is unreachable."""
        if self._producer is None:
            for topic, request_id, _ in emits:
                log.error("reply of request %s to topic %s dropped: this writer has no producer", request_id, topic)
            return
        sent: list[tuple[str, str, Any]] = []
        for topic, request_id, value in emits:
            key = request_id.encode()
            headers = [(HEADER_REQUEST_ID, key), _VERSION_HEADER]
            try:
                sent.append((topic, request_id, await self._producer.send(topic, value, key=key, headers=headers)))
            except KafkaError as exc:
                self._check(exc)
                self._log_lost(topic, request_id, exc)
        outcomes = await asyncio.gather(*(f for _, _, f in sent), return_exceptions=True)
        for (topic, request_id, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._check(outcome)
                self._log_lost(topic, request_id, outcome)

    @staticmethod
    def _check(exc: BaseException) -> None:
        """Raise BackendDownError when retrying may help (the broker is unreachable or slow)."""
        if isinstance(exc, KafkaConnectionError | KafkaTimeoutError) or getattr(exc, "retriable", False):
            raise BackendDownError(f"Kafka unavailable, topic replies not produced: {exc}") from exc

    @staticmethod
    def _log_lost(topic: str, request_id: str, exc: BaseException) -> None:
        # Retrying cannot fix it (unknown topic, not authorized, record too large): the result stays
        # readable under its result key, and the round goes on.
        log.error("reply of request %s to topic %s not produced (kept in Redis only): %s", request_id, topic, exc)
