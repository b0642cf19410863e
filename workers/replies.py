"""Delivering responses to Redis: every response of a round in one pipelined round trip.

A sync reply (kind ``stream`` with no ``ttl_s``: a gateway's reply stream) stores nothing per request:
the ``deliver_stream`` script ``XADD``s it to the reply stream (field ``r``) and ``EXPIRE``s the stream,
both keys of the stream's own hash slot. A redelivered request (its worker died after delivering, before
the commit) runs again and its second reply reaches the stream too: the gateway hands each request id
only its first reply and drops any later one (it no longer waits for that id), so the caller never gets
two answers. A reply kind ``stream`` with ``ttl_s`` (a producer client that may resume: ``fleet batch
run``) also stores its first result with ``SET result NX EX ttl`` (another slot, so not in the script; the
client drops a second reply by id as well), and the result is stored before the stream entry is written, so a
caller that read the entry finds the stored result: on one server the SET goes first in the same pipeline (one
connection, run in order); on a cluster, where the two keys may lie on nodes written in parallel, the entries
of such replies go in a second round trip once their results are stored (an entry whose SET failed waits for
the retry). Sync replies store nothing and keep their one round trip. Sync replies of one round to one
reply stream whose address reads lists (``ReplyAddress.lists``: a gateway that says so in the request) go
as one entry (``deliver_list``, field ``rb``: ``schemas.envelopes.pack_responses``), one XADD for them all;
a reader that never asked for lists never gets one.

Kind ``result`` (an async job, or a producer's stored result) goes through the ``deliver`` script on
the keys of the request's job shard (``names.job_shard``): ``SET result NX EX`` and, only when that
SET won and the job hash names a webhook, ``XADD`` the job id to the shard's callbacks stream. Kind
``none`` stores nothing. The scripts run as ``EVALSHA`` in one non-transactional pipeline; when the
server does not know a script yet (``NOSCRIPT``: first use, restart, ``SCRIPT FLUSH``) the scripts are
loaded and the pipeline is sent again, which the ``NX`` markers make harmless.

A result key is kept ``max(RESULT_TTL_S, reply.ttl_s)`` seconds: async jobs ask for at least their TTL.

A per-command error is permanent only when retrying cannot fix it (``WRONGTYPE``: a reply target of the
wrong type): it is logged and the round goes on. Server states that pass (``OOM`` under ``maxmemory`` with
``noeviction``, ``READONLY`` after a failover, cluster redirects, ``LOADING``, ``BUSY`` ...) fail the
delivery with BackendDownError, so nothing is committed and the reply is delivered on a later try. So does
a connection lost or timed out on one node of a Redis Cluster, which the cluster client reports as the result
of each command sent there (not raised): such a command may or may not have run, so its reply is sent again.
``deliver_some`` reports which replies such an error left undelivered, so a retry sends only those.

Redis replicates asynchronously: a reply a master took but had not yet sent to a replica is gone when that
replica takes over. With ``replica_acks`` (``FLEET_REDIS_REPLICA_ACKS``) the pipeline ends with one ``WAIT
replica_acks timeout`` per node written (on the connection that wrote, which is what WAIT waits for); the
replies of a node where fewer replicas acknowledged in time stay undelivered (sent again, not committed).
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

from schemas import ENVELOPE_VERSION, InferenceResponse, Names, RedisSettings, ReplyAddress, ReplyKind
from schemas.constants import (
    HEADER_ENVELOPE_VERSION,
    HEADER_REQUEST_ID,
    REPLY_STREAM_MAXLEN,
    REPLY_STREAM_TTL_S,
    RESULT_TTL_S,
)
from schemas.envelopes import pack_responses
from schemas.jobs import CALLBACK_FIELD, CALLBACK_STREAM_MAXLEN, F_CALLBACK

from .errors import BackendDownError

log = logging.getLogger("fleet.workers")

#: KEYS[1] result key, KEYS[2] job hash, KEYS[3] the job shard's callbacks stream (one hash slot). ARGV[1]
#: response bytes, ARGV[2] result TTL s, ARGV[3] request id. 1 when the SET won (a first result; a job
#: whose hash names a webhook is then announced on the callbacks stream, ``schemas.jobs``), else 0.
DELIVER_SCRIPT = f"""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  if redis.call('HEXISTS', KEYS[2], '{F_CALLBACK}') == 1 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', {CALLBACK_STREAM_MAXLEN}, '*', '{CALLBACK_FIELD}', ARGV[3])
  end
  return 1
end
return 0
"""
DELIVER_SHA = hashlib.sha1(DELIVER_SCRIPT.encode()).hexdigest()
#: KEYS[1] reply stream; ARGV[1] response bytes, ARGV[2] stream MAXLEN, ARGV[3] stream TTL s. Returns 1.
DELIVER_STREAM_SCRIPT = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'r', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
DELIVER_STREAM_SHA = hashlib.sha1(DELIVER_STREAM_SCRIPT.encode()).hexdigest()
#: The same with a reply list (field ``rb``: several responses, ``schemas.envelopes.pack_responses``).
DELIVER_LIST_SCRIPT = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'rb', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
DELIVER_LIST_SHA = hashlib.sha1(DELIVER_LIST_SCRIPT.encode()).hexdigest()
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


@dataclass(frozen=True, slots=True)
class _Command:
    """One command of a delivery: the pipeline method and its arguments, and the keys it writes."""

    method: str
    args: tuple[Any, ...]
    keys: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


class ReplicaAckError(RedisError):
    """Fewer replicas than asked acknowledged a node's replies in time: they may be lost with that master."""


@dataclass
class DeliveryReport:
    """What one delivery did: first results stored, and the replies a passing Redis error left undelivered."""

    first: int = 0
    pending: list[Reply] = field(default_factory=list)
    #: The first of those errors (for the log line).
    error: str = ""


class ReplyWriter:
    """Stores responses under their result keys, appends them to reply streams, produces topic replies."""

    def __init__(
        self,
        redis: Any,
        names: Names,
        producer: Any = None,
        *,
        replica_acks: int = 0,
        replica_ack_timeout_s: float = 0.5,
    ) -> None:
        self._redis = redis
        self._names = names
        self._producer = producer  # AIOKafkaProducer for reply kind ``topic`` (None: such replies only log)
        # Replicas that must acknowledge a round's writes (WAIT per node written; 0: none), and for how long.
        self._replica_acks = replica_acks
        self._replica_ack_timeout_ms = max(1, int(replica_ack_timeout_s * 1000))

    @classmethod
    def configured(cls, redis: Any, names: Names, producer: Any, settings: RedisSettings) -> ReplyWriter:
        """A writer that waits for the replicas ``settings`` asks for (``FLEET_REDIS_REPLICA_ACKS``)."""
        return cls(
            redis,
            names,
            producer,
            replica_acks=settings.replica_acks,
            replica_ack_timeout_s=settings.replica_ack_timeout_s,
        )

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
                for script in (DELIVER_SCRIPT, DELIVER_STREAM_SCRIPT, DELIVER_LIST_SCRIPT, DELIVER_TOPIC_SCRIPT):
                    await self._redis.script_load(script)
                results = await self._send(items)
        except RedisError as exc:
            raise BackendDownError(f"Redis unavailable, replies not delivered: {exc}") from exc
        emits: list[tuple[str, str, bytes]] = []
        emitting: set[str] = set()
        for (address, response), result in zip(items, results, strict=True):
            if isinstance(result, Exception) and not isinstance(result, ResponseError):
                # The cluster client hands back a node's lost connection (or timeout) as the result of each
                # command sent to it: the command may or may not have run, so it is not delivered yet.
                report.pending.append((address, response))
                report.error = report.error or f"Redis unavailable: {type(result).__name__}: {result}"
                continue
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
        """One pipelined round trip (two on a cluster when a reply is stored too); per item the outcome: 1 (a first
        result, or a reply stored nowhere), 0 (a result was stored already), the stored first result (kind
        topic), or the error of a command."""
        n = self._names
        # A reply stored too goes on its stream only once the result is stored: a caller that read the entry
        # then finds the result. On one server the SET comes first on the one connection; on a cluster the two
        # keys may lie on different nodes, written in parallel, so the entries wait for a second round trip.
        cluster = hasattr(self._redis, "get_node_from_key")
        first: list[_Command] = []
        after: list[tuple[int, _Command]] = []  # entries sent once the command at that index of ``first`` is done
        refs: list[tuple[int, ...]] = []  # per item: its commands (the one whose result counts first; -1 - i: after)
        listed = _listed(items)
        sent_lists: dict[str, int] = {}  # reply stream -> the index of its list's XADD
        args: tuple[Any, ...]
        for address, response in items:
            ttl = max(RESULT_TTL_S, address.ttl_s)
            group = listed.get(address.target) if address.lists else None
            if group is not None:  # one entry carries every response of the round for this stream
                index = sent_lists.get(address.target)
                if index is None:
                    value = pack_responses([items[i][1] for i in group])
                    args = (DELIVER_LIST_SHA, 1, address.target, value, REPLY_STREAM_MAXLEN, REPLY_STREAM_TTL_S)
                    index = sent_lists[address.target] = len(first)
                    first.append(_Command("evalsha", args, (address.target,)))
                refs.append((index,))
            elif address.kind is ReplyKind.TOPIC:
                result_key, emitted = n.result_key(response.id), n.emitted_key(response.id)
                args = (DELIVER_TOPIC_SHA, 2, result_key, emitted, response.to_bytes(), ttl)
                refs.append((len(first),))
                first.append(_Command("evalsha", args, (result_key,)))
            elif address.kind is ReplyKind.RESULT:
                shard = n.job_shard(response.id)
                keys = (n.result_key(response.id), n.job_key(response.id), n.callbacks_stream(shard))
                refs.append((len(first),))
                args = (DELIVER_SHA, 3, *keys, response.to_bytes(), ttl, response.id)
                first.append(_Command("evalsha", args, keys[:1]))
            elif address.kind is ReplyKind.STREAM and address.target:
                value = response.to_bytes()
                args = (DELIVER_STREAM_SHA, 1, address.target, value, REPLY_STREAM_MAXLEN, REPLY_STREAM_TTL_S)
                entry = _Command("evalsha", args, (address.target,))
                if not address.ttl_s:  # a sync reply: its stream entry only
                    refs.append((len(first),))
                    first.append(entry)
                    continue
                # A producer that may resume reads the first result back later: stored, then the entry.
                result_key = n.result_key(response.id)
                store = len(first)
                first.append(_Command("set", (result_key, value), (result_key,), {"nx": True, "ex": ttl}))
                if cluster:
                    refs.append((-1 - len(after), store))
                    after.append((store, entry))
                else:
                    refs.append((len(first), store))
                    first.append(entry)
            else:  # nobody reads a reply: nothing to store
                refs.append(())
        results = await self._pipeline(first)
        later: list[Any] = []
        if after:
            # An entry whose result a passing error left unstored waits for the retry (the reply is delivered
            # again); one whose SET cannot succeed (say WRONGTYPE: logged) is written as on one server.
            ready = [not _passing(results[store]) for store, _ in after]
            sent = iter(await self._pipeline([entry for (_, entry), go in zip(after, ready, strict=True) if go]))
            later = [next(sent) if go else results[store] for (store, _), go in zip(after, ready, strict=True)]
        outcomes: list[Any] = []
        for commands in refs:
            got = [results[i] if i >= 0 else later[-1 - i] for i in commands]
            errors = [r for r in got if isinstance(r, Exception)]
            outcomes.append(errors[0] if errors else got[0] if got else 1)
        return outcomes

    async def _pipeline(self, commands: Sequence[_Command]) -> list[Any]:
        """Send ``commands`` in one non-transactional pipeline (and the ``WAIT`` for replicas, when asked); per
        command its result, or its error (the command's, or a node's too few replica acknowledgements)."""
        if not commands:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                getattr(pipe, command.method)(*command.args, **command.kwargs)
            waits, command_nodes = self._queue_waits(pipe, [command.keys for command in commands])
            results = list(await pipe.execute(raise_on_error=False))
        acked = {node: self._acked(node, results[len(commands) + i]) for i, node in enumerate(waits)}
        outcomes = results[: len(commands)]
        if acked:  # written: it counts once enough replicas hold it too
            for index, result in enumerate(outcomes):
                errors = [e for e in (acked[node] for node in command_nodes[index]) if e is not None]
                if errors and not isinstance(result, Exception):
                    outcomes[index] = errors[0]
        return outcomes

    def _queue_waits(
        self, pipe: Any, written: Sequence[tuple[str, ...]]
    ) -> tuple[dict[str, Any], list[tuple[str, ...]]]:
        """Queue one ``WAIT`` per node written, after the writes and on the same connection (WAIT waits for
        the writes of its own connection). Returns the nodes by name in the order of their WAITs ("" on a
        single server), and per command the names of the nodes it writes to."""
        if not self._replica_acks:
            return {}, []
        nodes: dict[str, Any] = {}
        item_nodes: list[tuple[str, ...]] = []
        cluster = hasattr(self._redis, "get_node_from_key")
        for keys in written:
            names = []
            for key in keys:
                node = self._redis.get_node_from_key(key) if cluster else None
                names.append(node.name if node is not None else "")
                nodes.setdefault(names[-1], node)
            item_nodes.append(tuple(names))
        for node in nodes.values():
            wait = ("WAIT", self._replica_acks, self._replica_ack_timeout_ms)
            pipe.execute_command(*wait, **({"target_nodes": node} if node is not None else {}))
        return nodes, item_nodes

    def _acked(self, node: str, result: Any) -> Exception | None:
        """None when ``WAIT`` on ``node`` saw enough replicas acknowledge, else the error of the node's replies."""
        if isinstance(result, Exception):
            return result
        if isinstance(result, int) and result >= self._replica_acks:
            return None
        where = f" on {node}" if node else ""
        return ReplicaAckError(
            f"NOREPLICAS {result} of {self._replica_acks} replicas acknowledged the replies{where} "
            f"within {self._replica_ack_timeout_ms} ms"
        )

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


def _passing(result: Any) -> bool:
    """True when a command's outcome is an error that a later try may get past (delivered again then)."""
    return isinstance(result, Exception) and not (isinstance(result, ResponseError) and not is_transient(result))


def _listed(items: Sequence[Reply]) -> dict[str, list[int]]:
    """Reply streams that get a reply list this round, with the indexes of its replies: a sync reply (kind
    ``stream``, no ``ttl_s``) whose address reads lists (``ReplyAddress.lists``), two or more to one stream."""
    groups: dict[str, list[int]] = {}
    for index, (address, _) in enumerate(items):
        if address.lists and address.kind is ReplyKind.STREAM and address.target and not address.ttl_s:
            groups.setdefault(address.target, []).append(index)
    return {target: indexes for target, indexes in groups.items() if len(indexes) > 1}
