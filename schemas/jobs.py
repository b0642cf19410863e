"""Async jobs in Redis: the job hash, how a job's status is derived, and the scripts that change it.

A job is a request with reply kind ``result``; its id is the request id. State lives in two keys:

- ``names.job_key(id)``: HASH written by the gateway at submit (fields below), EXPIRE = the job TTL.
  A worker adds ``started_ms``/``worker`` when it takes the request into a round (``CLAIM_SCRIPT``);
  a cancel adds ``cancelled_ms``.
- ``names.result_key(id)``: the first stored ``InferenceResponse`` (the worker's ``deliver`` script:
  ``SET NX``), kept at least as long as the job (the request's ``ReplyAddress.ttl_s``). A cancel
  stores a ``CANCELLED`` error response there, so a later worker result loses the ``NX`` race.
- ``names.callbacks_stream``: whoever stores a job's first result (the worker's ``deliver`` script,
  the cancel script, or the expiry script) appends the job id when the job hash has a ``callback_url``,
  in the same script; the gateways' webhook dispatcher (group ``webhooks``) POSTs the job document there.
- ``names.job_deadlines_key``: jobs with a ``callback_url``, scored by their deadline plus a grace. A
  job that no worker answered by then (none ever took it, or the one that did died) gets a
  ``DEADLINE_EXCEEDED`` result from a gateway (``EXPIRE_SCRIPT``), so its webhook fires with
  ``expired`` instead of never; a worker that answers later loses the ``NX`` race.
- ``names.job_outbox_key`` and ``names.job_request_key(id)``: the outbox. The submit script stores the
  job together with its topic and request envelope and an outbox entry scored by when a sweep may
  republish it; the gateway then publishes and removes both (``ZREM`` + ``DEL``). A gateway that dies in
  between leaves the entry: every gateway sweeps the outbox, claims due entries atomically
  (``OUTBOX_CLAIM_SCRIPT`` moves their score forward) and publishes them. A job is thus published at
  least once; a duplicate record is harmless because a worker stores only the first result (``NX``)
  and ``CLAIM_SCRIPT`` skips a request whose result is stored.

The status is derived, never stored: from the result when there is one (done, failed, cancelled,
expired = ``DEADLINE_EXCEEDED``), else running when a worker claimed it, else expired when its
deadline passed unclaimed, else pending. No worker needs to know about jobs to finish one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .envelopes import ErrorInfo, InferenceResponse
from .errors import ErrorCode

#: Fields of the job hash.
F_MODEL = "model"
F_VERSION = "version"
F_CLIENT_ID = "client_id"  # the OIP ``id`` the client sent, echoed in the result
F_CREATED = "created_ms"
F_DEADLINE = "deadline_ms"
F_EXPIRES = "expires_ms"  # when the job (hash, idempotency key) is forgotten
F_STARTED = "started_ms"  # set by the worker that took the request
F_WORKER = "worker"
F_CANCELLED = "cancelled_ms"
F_CALLBACK = "callback_url"  # completion webhook (only when the gateway allows webhooks)

#: Consumer group of the gateways on ``names.callbacks_stream``; entries carry the job id in field ``j``.
CALLBACK_GROUP = "webhooks"
CALLBACK_FIELD = "j"
#: Approximate length cap of the callbacks stream.
CALLBACK_STREAM_MAXLEN = 100_000
#: Fields of an outboxed job's request hash (``names.job_request_key``): its topic and request envelope.
OUTBOX_TOPIC = "t"
OUTBOX_REQUEST = "r"


class JobStatus(StrEnum):
    """Where an async job stands."""

    PENDING = "pending"  # queued, no worker has taken it
    RUNNING = "running"  # a worker took it into a round
    DONE = "done"  # result available
    FAILED = "failed"  # the worker answered with an error
    CANCELLED = "cancelled"  # cancelled while pending; never ran
    EXPIRED = "expired"  # its deadline passed before a worker ran it


@dataclass(frozen=True, slots=True)
class JobState:
    """A job as read from Redis: its hash fields and its stored result, if any."""

    job_id: str
    model: str
    version: str
    client_id: str
    created_ms: float
    deadline_ms: float | None
    expires_ms: float | None
    started_ms: float | None
    worker: str
    response: InferenceResponse | None
    callback_url: str = ""

    @classmethod
    def from_redis(cls, job_id: str, fields: dict[bytes, bytes], result: bytes | None) -> JobState:
        """Decode the hash (``HGETALL``) and the result (``GET``); raises SchemaError on a bad result."""
        text = {k.decode(): v.decode() for k, v in fields.items()}
        return cls(
            job_id=job_id,
            model=text.get(F_MODEL, ""),
            version=text.get(F_VERSION, ""),
            client_id=text.get(F_CLIENT_ID, ""),
            created_ms=_number(text.get(F_CREATED)) or 0.0,
            deadline_ms=_number(text.get(F_DEADLINE)),
            expires_ms=_number(text.get(F_EXPIRES)),
            started_ms=_number(text.get(F_STARTED)),
            worker=text.get(F_WORKER, ""),
            response=None if result is None else InferenceResponse.from_bytes(result),
            callback_url=text.get(F_CALLBACK, ""),
        )

    def status(self, now_ms: float) -> JobStatus:
        """The derived status at ``now_ms`` (see the module doc)."""
        if self.response is not None:
            return status_of(self.response)
        if self.started_ms is not None:
            return JobStatus.RUNNING
        if self.deadline_ms is not None and now_ms >= self.deadline_ms:
            return JobStatus.EXPIRED
        return JobStatus.PENDING

    def error(self, now_ms: float) -> ErrorInfo | None:
        """Why the job did not produce outputs (None while pending/running and when done)."""
        if self.response is not None:
            return self.response.error
        if self.status(now_ms) is JobStatus.EXPIRED:
            return ErrorInfo(ErrorCode.DEADLINE_EXCEEDED, "the deadline passed before a worker took the job")
        return None


def status_of(response: InferenceResponse) -> JobStatus:
    """Status of a job whose result is ``response``."""
    if response.error is None:
        return JobStatus.DONE
    if response.error.code is ErrorCode.CANCELLED:
        return JobStatus.CANCELLED
    if response.error.code is ErrorCode.DEADLINE_EXCEEDED:
        return JobStatus.EXPIRED
    return JobStatus.FAILED


def _number(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


#: Gateway, at submit. KEYS[1] job hash, KEYS[2] deadlines ZSET, KEYS[3] outbox ZSET, KEYS[4] request hash,
#: KEYS[5] idempotency key (optional); ARGV[1] TTL s, ARGV[2] idempotency value, ARGV[3] when to expire it
#: unanswered (epoch ms; "" = not indexed: no webhook), ARGV[4] job id, ARGV[5] when a sweep may publish it
#: (epoch ms), ARGV[6] topic, ARGV[7] request envelope, ARGV[8..] field/value pairs of the hash.
#: Returns nil when the job was created (and put in the outbox), else the idempotency value already
#: stored (a resubmit).
SUBMIT_SCRIPT = f"""
if #KEYS > 4 then
  local existing = redis.call('GET', KEYS[5])
  if existing then return existing end
  redis.call('SET', KEYS[5], ARGV[2], 'EX', ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
end
redis.call('HSET', KEYS[4], '{OUTBOX_TOPIC}', ARGV[6], '{OUTBOX_REQUEST}', ARGV[7])
redis.call('EXPIRE', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
return false
"""

#: Gateway, sweeping ``names.job_outbox_key``. KEYS[1] outbox ZSET; ARGV[1] now (epoch ms), ARGV[2] the
#: claimed entries' new score (now + lease), ARGV[3] most entries. Returns the ids of the due entries,
#: oldest first, each now claimed by this caller until the lease ends (another gateway's sweep skips it).
OUTBOX_CLAIM_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return due
"""

#: Gateway, sweeping ``names.job_deadlines_key``. KEYS[1] deadlines ZSET, KEYS[2] job hash, KEYS[3] result
#: key, KEYS[4] callbacks stream; ARGV[1] DEADLINE_EXCEEDED response bytes, ARGV[2] result TTL s,
#: ARGV[3] job id. Returns 'taken' (another gateway swept it), 'missing' (the job is gone),
#: 'finished' (a result is stored) or 'expired' (the result stored now and the webhook announced).
EXPIRE_SCRIPT = f"""
if redis.call('ZREM', KEYS[1], ARGV[3]) == 0 then return 'taken' end
if redis.call('EXISTS', KEYS[2]) == 0 then return 'missing' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'finished' end
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2])
if redis.call('HEXISTS', KEYS[2], '{F_CALLBACK}') == 1 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', {CALLBACK_STREAM_MAXLEN}, '*', '{CALLBACK_FIELD}', ARGV[3])
end
return 'expired'
"""

#: Gateway, on ``DELETE``. KEYS[1] job hash, KEYS[2] result key, KEYS[3] callbacks stream;
#: ARGV[1] CANCELLED response bytes, ARGV[2] result TTL s, ARGV[3] now (epoch ms), ARGV[4] job id.
#: Returns 'missing', 'finished' (a result is stored), 'running', 'expired' (deadline passed
#: unclaimed) or 'cancelled'.
CANCEL_SCRIPT = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'finished' end
if redis.call('HEXISTS', KEYS[1], '{F_STARTED}') == 1 then return 'running' end
local deadline = redis.call('HGET', KEYS[1], '{F_DEADLINE}')
if deadline and tonumber(deadline) <= tonumber(ARGV[3]) then return 'expired' end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('HSET', KEYS[1], '{F_CANCELLED}', ARGV[3])
if redis.call('HEXISTS', KEYS[1], '{F_CALLBACK}') == 1 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', {CALLBACK_STREAM_MAXLEN}, '*', '{CALLBACK_FIELD}', ARGV[4])
end
return 'cancelled'
"""

#: Worker, before running a round's result-kind requests. KEYS: pairs (result key, job hash);
#: ARGV[1] now (epoch ms), ARGV[2] worker id. For each pair returns 0 when a result is already
#: stored (cancelled, or a redelivered request that was answered: skip it) else 1, after marking
#: the job (when its hash still exists) as started by this worker.
CLAIM_SCRIPT = f"""
local out = {{}}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[#out + 1] = 0
  else
    if redis.call('EXISTS', KEYS[i + 1]) == 1 then
      redis.call('HSET', KEYS[i + 1], '{F_STARTED}', ARGV[1], '{F_WORKER}', ARGV[2])
    end
    out[#out + 1] = 1
  end
end
return out
"""
