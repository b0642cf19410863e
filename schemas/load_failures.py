"""Failed model loads, recorded by workers for the gateway's model readiness (``Names.load_failure_key``).

A worker that cannot load a model version (artifact missing or corrupt, too large for its memory budget, a
broken ``memory_cap_mb``) writes the reason and the time as JSON with an EXPIRE of `LOAD_FAILURE_TTL_S`; a
worker that loads the version deletes the key. The gateway reads it (`gateway.serviceability`): while it
exists and no worker holds the version resident, the version is not ready and a sync request fails at once
with MODEL_LOAD_FAILED instead of waiting for its timeout. The TTL is how long the gateway trusts the
failure: after it, requests reach a worker again, which tries the load again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from .errors import SchemaError
from .names import Names

log = logging.getLogger("fleet.schemas")

#: Seconds a recorded load failure lasts unless a worker loads the version (or fails again) first.
LOAD_FAILURE_TTL_S = 60
#: Bound of each write: recording is best effort and must never hold a worker up.
_WRITE_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """Why a worker could not load a model version, and when (epoch ms)."""

    reason: str
    ts_ms: float
    worker: str = ""

    def to_bytes(self) -> bytes:
        """JSON, readable with ``redis-cli GET``."""
        return json.dumps({"reason": self.reason, "ts_ms": self.ts_ms, "worker": self.worker}).encode()

    @classmethod
    def from_bytes(cls, data: bytes | str) -> LoadFailure:
        """Decode `to_bytes`; SchemaError on anything else."""
        try:
            obj = json.loads(data)
            return cls(str(obj["reason"]), float(obj["ts_ms"]), str(obj.get("worker", "")))
        except (ValueError, TypeError, KeyError) as exc:
            raise SchemaError(f"bad load failure record: {exc!r}") from None


class LoadFailures:
    """A worker's writer of load failures: best effort, bounded, never raises."""

    def __init__(self, redis: Any, names: Names, worker: str = "", *, ttl_s: int = LOAD_FAILURE_TTL_S) -> None:
        self._redis = redis
        self._names = names
        self._worker = worker
        self._ttl_s = ttl_s

    async def record(self, model: str, version: str, reason: str, ts_ms: float) -> None:
        """Note that ``model:version`` failed to load for ``reason`` at ``ts_ms``."""
        failure = LoadFailure(reason, ts_ms, self._worker)
        await self._write("record", self._redis.set(self._key(model, version), failure.to_bytes(), ex=self._ttl_s))

    async def clear(self, model: str, version: str) -> None:
        """Note that ``model:version`` loaded (a failure recorded before no longer holds)."""
        await self._write("clear", self._redis.delete(self._key(model, version)))

    def _key(self, model: str, version: str) -> str:
        return self._names.load_failure_key(model, version)

    async def _write(self, what: str, call: Any) -> None:
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT_S):
                await call
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("load failure not %s in Redis: %s", "recorded" if what == "record" else "cleared", exc)
