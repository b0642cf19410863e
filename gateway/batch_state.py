"""The OpenAI Batch API's small state in Redis: the batch objects, their checkpoints and who drives each one.

Keys (one hash slot, ``{ns}:{ns.batches}``): ``...:batch:{id}`` (hash: ``doc``, the batch object as JSON without
its derived ``cancelling`` status; ``ckpt``, the committed progress; ``cancel``, when a cancel was asked; ``owner``,
the API key that created it), ``...:batch:{id}:lease`` (the token of the gateway that drives it), ``...:index``
(sorted set of every batch by creation time, for listing) and ``...:active`` (the batches not finished yet).

A gateway drives a batch only while it holds the batch's lease (``SET NX PX``, renewed by the holder); its
checkpoints are written by a script that checks the lease first, so a gateway that lost its lease (paused past
the lease, partitioned) can no longer move the batch: the next holder resumes from the last committed checkpoint.
Files (inputs, outputs, the parts of running batches) are in the file store, never here.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from schemas import Names

FINAL = frozenset({"completed", "failed", "cancelled", "expired"})
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
#: Seconds a finished batch's state is kept (its files stay in the store).
FINISHED_TTL_S = 30 * 86_400

_COMMIT_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'doc', ARGV[2], 'ckpt', ARGV[3])
if ARGV[4] == '1' then
  redis.call('SREM', KEYS[3], ARGV[5])
  redis.call('DEL', KEYS[1])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
end
return 1
"""
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


@dataclass(frozen=True)
class Progress:
    """A batch's committed progress: lines ``[0, done)`` are in its committed parts."""

    done: int = 0
    offset: int = 0  # byte offset of line ``done`` in the input file
    completed: int = 0
    failed: int = 0
    resend_until: int = 0  # lines below this may have been sent: look for their stored answers first
    out_parts: tuple[str, ...] = ()
    err_parts: tuple[str, ...] = ()
    run: str = ""  # the run's token: request ids are f"{run}-{line}", the same for every gateway that resumes it

    def advance(self, **changes: Any) -> Progress:
        """A copy with ``changes``."""
        return replace(self, **changes)

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Progress:
        """Read the stored form (a fresh one when there is none)."""
        if not raw:
            return cls()
        doc = json.loads(raw)
        doc["out_parts"] = tuple(doc.get("out_parts", ()))
        doc["err_parts"] = tuple(doc.get("err_parts", ()))
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


@dataclass
class BatchRecord:
    """One batch as stored: its OpenAI object, progress, cancel request and owner."""

    doc: dict[str, Any]
    progress: Progress = field(default_factory=Progress)
    cancel_at: int | None = None
    owner: str = ""

    def view(self) -> dict[str, Any]:
        """The batch object an API caller sees (``cancelling`` while a cancel is under way)."""
        doc = dict(self.doc)
        if self.cancel_at is not None and doc["status"] not in FINAL:
            doc["status"] = "cancelling"
            doc["cancelling_at"] = self.cancel_at
        if doc["status"] not in FINAL or doc["status"] == "completed":
            total = doc["request_counts"]["total"]
            doc["request_counts"] = {
                "total": total,
                "completed": self.progress.completed,
                "failed": self.progress.failed,
            }
        return doc


def new_batch_doc(batch_id: str, input_file_id: str, endpoint: str, window: str, metadata: Any) -> dict[str, Any]:
    """A new batch object (status ``validating``)."""
    now = int(time.time())
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + 86_400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }


class BatchStore:
    """The batches' Redis state (``redis.asyncio`` client)."""

    def __init__(self, redis: Any, names: Names) -> None:
        self._redis = redis
        self._tag = names.tag("batches")
        self._commit = redis.register_script(_COMMIT_LUA)
        self._renew = redis.register_script(_RENEW_LUA)
        self._release = redis.register_script(_RELEASE_LUA)

    def _key(self, batch_id: str) -> str:
        return f"{self._tag}:batch:{batch_id}"

    def _lease(self, batch_id: str) -> str:
        return f"{self._tag}:batch:{batch_id}:lease"

    @property
    def _index(self) -> str:
        return f"{self._tag}:index"

    @property
    def _active(self) -> str:
        return f"{self._tag}:active"

    async def create(self, doc: dict[str, Any], owner: str) -> None:
        """Store a new batch and mark it active."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(doc["id"]), mapping={"doc": json.dumps(doc), "owner": owner})
            pipe.zadd(self._index, {doc["id"]: doc["created_at"]})
            pipe.sadd(self._active, doc["id"])
            await pipe.execute()

    async def get(self, batch_id: str) -> BatchRecord | None:
        """The stored batch, or None."""
        raw = await self._redis.hgetall(self._key(batch_id))
        if not raw or b"doc" not in raw:
            return None
        cancel = raw.get(b"cancel")
        return BatchRecord(
            json.loads(raw[b"doc"]),
            Progress.from_json(raw.get(b"ckpt")),
            int(cancel) if cancel else None,
            (raw.get(b"owner") or b"").decode(),
        )

    async def ids(self, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Batch ids, newest first, after the id ``after``; and whether more follow."""
        start = 0
        if after:
            rank = await self._redis.zrevrank(self._index, after)
            start = 0 if rank is None else rank + 1
        raw = await self._redis.zrevrange(self._index, start, start + limit)
        ids = [r.decode() for r in raw]
        return ids[:limit], len(ids) > limit

    async def request_cancel(self, batch_id: str) -> None:
        """Ask the batch's driver to stop (kept once set)."""
        await self._redis.hsetnx(self._key(batch_id), "cancel", int(time.time()))

    async def active(self) -> list[str]:
        """The batches not finished yet."""
        return sorted(m.decode() for m in await self._redis.smembers(self._active))

    async def acquire(self, batch_id: str, token: str, lease_ms: int) -> bool:
        """Take the batch's lease when nobody holds it."""
        return bool(await self._redis.set(self._lease(batch_id), token, nx=True, px=lease_ms))

    async def renew(self, batch_id: str, token: str, lease_ms: int) -> bool:
        """Extend our lease; False when it is not ours any more."""
        return bool(await self._renew(keys=[self._lease(batch_id)], args=[token, lease_ms]))

    async def release(self, batch_id: str, token: str) -> None:
        """Give the lease back (when still ours)."""
        await self._release(keys=[self._lease(batch_id)], args=[token])

    async def commit(self, batch_id: str, token: str, doc: dict[str, Any], progress: Progress) -> bool:
        """Write the batch object and progress while we hold the lease; a final status also retires the batch
        (out of the active set, lease dropped, state kept ``FINISHED_TTL_S``). False: the lease is not ours."""
        final = "1" if doc["status"] in FINAL else "0"
        done = await self._commit(
            keys=[self._lease(batch_id), self._key(batch_id), self._active],
            args=[token, json.dumps(doc), progress.to_json(), final, batch_id, FINISHED_TTL_S],
        )
        return bool(done)
