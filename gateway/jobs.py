"""The gateway's view of async jobs in Redis: create, read and cancel, each one bounded round trip.

Key layout and scripts: ``schemas.jobs``. Every call is bounded by ``backend_timeout_s``; a Redis
that does not answer in time, or at all, is a ``BackendDownError`` (503).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from schemas import JobState, Names, SchemaError
from schemas.jobs import CANCEL_SCRIPT, EXPIRE_SCRIPT, SUBMIT_SCRIPT

from .errors import BackendDownError, GatewayError, redis_bounded

T = TypeVar("T")


class JobStore:
    """Job hashes, idempotency keys and stored results of one namespace."""

    def __init__(self, redis: Any, names: Names, timeout_s: float) -> None:
        self._redis = redis
        self._names = names
        self._timeout_s = timeout_s
        self._submit = redis.register_script(SUBMIT_SCRIPT)
        self._cancel = redis.register_script(CANCEL_SCRIPT)
        self._expire = redis.register_script(EXPIRE_SCRIPT)

    async def create(
        self,
        job_id: str,
        fields: Mapping[str, str],
        ttl_s: int,
        idempotency: tuple[str, str] | None,
        owner: str = "",
        expire_at_ms: float | None = None,
    ) -> str | None:
        """Store a new job; with ``idempotency`` = (key, value), only if ``owner``'s key is new. With
        ``expire_at_ms`` (jobs with a webhook), a gateway expires it then if no worker has answered.

        Returns None when the job was created, else the value the idempotency key already holds.
        """
        keys = [self._names.job_key(job_id), self._names.job_deadlines_key]
        value = ""
        if idempotency is not None:
            keys.append(self._names.idempotency_key(idempotency[0], owner))
            value = idempotency[1]
        expire_at = "" if expire_at_ms is None else str(int(expire_at_ms))
        args: list[str | int] = [ttl_s, value, expire_at, job_id]
        for name, field_value in fields.items():
            args += [name, field_value]
        existing = await self._bounded(self._submit(keys=keys, args=args))
        return None if existing is None else bytes(existing).decode()

    async def forget(self, job_id: str, idempotency_key: str | None, owner: str = "") -> None:
        """Remove a job whose request could not be published (best effort: the caller answers 503 anyway)."""
        keys = [self._names.job_key(job_id)]
        if idempotency_key is not None:
            keys.append(self._names.idempotency_key(idempotency_key, owner))
        try:
            await self._bounded(self._redis.delete(*keys))
            await self._bounded(self._redis.zrem(self._names.job_deadlines_key, job_id))
        except BackendDownError:
            pass  # the job expires with its TTL and reads as expired once its deadline passes

    async def read(self, job_id: str) -> JobState | None:
        """The job's hash and stored result in one round trip; None when the job is unknown."""

        async def both() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._names.job_key(job_id))
                pipe.get(self._names.result_key(job_id))
                return list(await pipe.execute())

        fields, result = await self._bounded(both())
        if not fields:
            return None
        try:
            return JobState.from_redis(job_id, fields, result)
        except SchemaError as exc:
            raise GatewayError(f"the stored result of job {job_id!r} does not decode: {exc.message}") from None

    async def cancel(self, job_id: str, cancelled: bytes, result_ttl_s: int, now_ms: float) -> str:
        """Run the cancel script: 'missing', 'finished', 'running', 'expired' or 'cancelled'."""
        keys = [self._names.job_key(job_id), self._names.result_key(job_id), self._names.callbacks_stream]
        outcome = await self._bounded(self._cancel(keys=keys, args=[cancelled, result_ttl_s, int(now_ms), job_id]))
        return bytes(outcome).decode()

    async def due(self, now_ms: float, limit: int) -> list[str]:
        """Ids of jobs with a webhook whose expiry time (deadline + grace) has come, oldest first."""
        raw = await self._bounded(
            self._redis.zrangebyscore(self._names.job_deadlines_key, "-inf", int(now_ms), start=0, num=limit)
        )
        return [bytes(item).decode() if isinstance(item, bytes) else str(item) for item in raw]

    async def expire(self, job_id: str, expired: bytes, result_ttl_s: int) -> str:
        """Run the expiry script: 'taken', 'missing', 'finished' or 'expired' (see ``EXPIRE_SCRIPT``)."""
        n = self._names
        keys = [n.job_deadlines_key, n.job_key(job_id), n.result_key(job_id), n.callbacks_stream]
        outcome = await self._bounded(self._expire(keys=keys, args=[expired, result_ttl_s, job_id]))
        return bytes(outcome).decode()

    async def _bounded(self, call: Awaitable[T]) -> T:
        return await redis_bounded(call, self._timeout_s, "job store")
