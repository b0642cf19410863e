"""The gateway's view of async jobs in Redis: create, read and cancel, each one bounded round trip;
and the outbox sweep that publishes jobs a gateway stored but did not get to publish.

Key layout and scripts: ``schemas.jobs``. Every call is bounded by ``backend_timeout_s``; a Redis
that does not answer in time, or at all, is a ``BackendDownError`` (503).

Outbox: a job is stored together with its request (``create``), then published, then taken out of the
outbox (``published``). Every gateway runs an ``OutboxSweeper`` that claims outbox entries older than
``republish_after_s`` (one gateway wins each) and publishes them, so a job whose gateway died (or whose
publish failed or timed out) between storing and publishing is still run; its idempotent replay is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, TypeVar

from redis.crc import key_slot

from common import supervise, text
from schemas import FleetError, InferenceRequest, JobState, Names, SchemaError, now_ms
from schemas.jobs import (
    CANCEL_SCRIPT,
    EXPIRE_SCRIPT,
    OUTBOX_CLAIM_SCRIPT,
    OUTBOX_REQUEST,
    OUTBOX_TOPIC,
    SUBMIT_SCRIPT,
)
from schemas.pipelines import restart_requests

from .errors import BackendDownError, GatewayError, redis_bounded
from .publisher import RequestPublisher

log = logging.getLogger("fleet.gateway")

T = TypeVar("T")

_OUTBOX_SWEEP_INTERVAL_S = 1.0
_OUTBOX_BATCH = 100
#: Pause before a crashed background loop runs again: doubles from the first to the second value; it is
#: back at the first once the loop ran the second value's time without crashing.
def republish_after_s(backend_timeout_s: float) -> float:
    """How old an outbox entry is before a sweep (re)publishes it: longer than the submitting gateway can
    still be publishing it (its publish and its removal from the outbox are each bounded by the backend
    timeout), plus a second of margin, so a sweep rarely duplicates a record that is on its way."""
    return 2 * backend_timeout_s + 1.0


async def _every(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await every call (one per job shard) together; the first error is raised once all have ended."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes  # type: ignore[return-value]


class JobStore:
    """Job hashes, idempotency keys and stored results of one namespace."""

    def __init__(self, redis: Any, names: Names, timeout_s: float) -> None:
        self._redis = redis
        self._names = names
        self._timeout_s = timeout_s
        self._submit = redis.register_script(SUBMIT_SCRIPT)
        self._cancel = redis.register_script(CANCEL_SCRIPT)
        self._expire = redis.register_script(EXPIRE_SCRIPT)
        self._claim = redis.register_script(OUTBOX_CLAIM_SCRIPT)

    @property
    def names(self) -> Names:
        """The namespace's key and topic names."""
        return self._names

    async def create(
        self,
        job_id: str,
        fields: Mapping[str, str],
        ttl_s: int,
        idempotency: tuple[str, str] | None,
        owner: str = "",
        expire_at_ms: float | None = None,
        *,
        topic: str,
        request: InferenceRequest,
        republish_at_ms: float,
    ) -> str | None:
        """Store a new job and put it in the outbox with ``request`` (to be published to ``topic``; a sweep
        publishes it from ``republish_at_ms`` on unless ``published`` is called first); with
        ``idempotency`` = (key, value), only if ``owner``'s key is new. With ``expire_at_ms`` (jobs with a
        webhook), a gateway expires it then if no worker has answered.

        Returns None when the job was created, else the value the idempotency key already holds.
        """
        n = self._names
        shard = n.job_shard(job_id)
        keys = [n.job_key(job_id), n.job_deadlines_key(shard), n.job_outbox_key(shard), n.job_request_key(job_id)]
        value = ""
        if idempotency is not None:
            keys.append(n.idempotency_key(idempotency[0], owner))
            if key_slot(keys[-1].encode()) != key_slot(keys[0].encode()):
                # One script, one hash slot: the id must come from names.new_job_id(key, owner).
                raise ValueError(f"job id {job_id!r} is not in the job shard of its idempotency key")
            value = idempotency[1]
        expire_at = "" if expire_at_ms is None else str(int(expire_at_ms))
        args: list[str | int | bytes] = [ttl_s, value, expire_at, job_id, int(republish_at_ms), topic]
        args.append(request.to_bytes())
        for name, field_value in fields.items():
            args += [name, field_value]
        existing = await self._bounded(self._submit(keys=keys, args=args))
        return None if existing is None else bytes(existing).decode()

    async def published(self, job_id: str) -> None:
        """Take a job out of the outbox: its request was published (or is never to be)."""
        n = self._names

        async def both() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(n.job_outbox_key(n.job_shard(job_id)), job_id)
                pipe.delete(n.job_request_key(job_id))
                await pipe.execute()

        await self._bounded(both())

    async def claim_outbox(self, now: float, lease_s: float, limit: int) -> list[str]:
        """Ids of outbox entries due at ``now`` (epoch ms), at most ``limit`` of each job shard, oldest first,
        claimed for ``lease_s``: no other sweep takes them before the lease ends (then they are due again
        unless ``published``)."""
        args = [int(now), int(now + lease_s * 1000), limit]
        n = self._names
        shards = await self._bounded(
            _every(self._claim(keys=[n.job_outbox_key(s)], args=args) for s in n.job_shards)
        )
        return [bytes(item).decode() for raw in shards for item in raw]

    async def outbox_entry(self, job_id: str) -> tuple[str, InferenceRequest] | None:
        """The topic and request of an outboxed job; None when it is gone (published meanwhile, or its TTL
        passed). SchemaError when the stored request does not decode."""
        topic, request = await self._bounded(
            self._redis.hmget(self._names.job_request_key(job_id), OUTBOX_TOPIC, OUTBOX_REQUEST)
        )
        if topic is None or request is None:
            return None
        return bytes(topic).decode(), InferenceRequest.from_bytes(bytes(request))

    async def forget(self, job_id: str, idempotency_key: str | None, owner: str = "") -> None:
        """Remove a job whose request can never be published (best effort: the caller answers an error anyway)."""
        n = self._names
        keys = [n.job_key(job_id), n.job_request_key(job_id)]
        if idempotency_key is not None:
            keys.append(n.idempotency_key(idempotency_key, owner))
        try:
            await self._bounded(self._redis.delete(*keys))
            await self._bounded(self._redis.zrem(n.job_deadlines_key(n.job_shard(job_id)), job_id))
            await self._bounded(self._redis.zrem(n.job_outbox_key(n.job_shard(job_id)), job_id))
        except BackendDownError:
            pass  # the job expires with its TTL; a sweep drops its outbox entry once the request is gone

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
        n = self._names
        keys = [n.job_key(job_id), n.result_key(job_id), n.callbacks_stream(n.job_shard(job_id))]
        outcome = await self._bounded(self._cancel(keys=keys, args=[cancelled, result_ttl_s, int(now_ms), job_id]))
        return bytes(outcome).decode()

    async def due(self, now_ms: float, limit: int) -> list[str]:
        """Ids of jobs with a webhook whose expiry time (deadline + grace) has come, at most ``limit`` of each
        job shard, oldest first."""
        n = self._names
        shards = await self._bounded(
            _every(
                self._redis.zrangebyscore(n.job_deadlines_key(s), "-inf", int(now_ms), start=0, num=limit)
                for s in n.job_shards
            )
        )
        return [text(item) for raw in shards for item in raw]

    async def expire(self, job_id: str, expired: bytes, result_ttl_s: int) -> str:
        """Run the expiry script: 'taken', 'missing', 'finished' or 'expired' (see ``EXPIRE_SCRIPT``)."""
        n = self._names
        shard = n.job_shard(job_id)
        keys = [n.job_deadlines_key(shard), n.job_key(job_id), n.result_key(job_id), n.callbacks_stream(shard)]
        outcome = await self._bounded(self._expire(keys=keys, args=[expired, result_ttl_s, job_id]))
        return bytes(outcome).decode()

    async def _bounded(self, call: Awaitable[T]) -> T:
        return await redis_bounded(call, self._timeout_s, "job store")


class OutboxSweeper:
    """Publishes outboxed jobs no gateway published in time (see the module doc); ``start()``/``stop()``
    with the gateway. Every gateway runs one; each due entry is claimed by exactly one of them."""

    def __init__(self, store: JobStore, publisher: RequestPublisher, lease_s: float) -> None:
        self._store = store
        self._publisher = publisher
        self._lease_s = lease_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start sweeping every second (supervised: a crash is logged and the loop restarts)."""
        if self._task is None:
            routine = supervise("gateway job outbox sweep", self._routine, log)
            self._task = asyncio.create_task(routine, name="fleet-gateway-job-outbox")

    async def stop(self) -> None:
        """Stop sweeping; idempotent. An entry claimed but not published is due again after its lease."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _routine(self) -> None:
        while True:
            try:
                while await self.sweep() >= _OUTBOX_BATCH:  # more may be due: go on at once
                    pass
            except BackendDownError as exc:  # Kafka or Redis down or slow: the claimed entries come due again
                log.warning("job outbox sweep stopped: %s", exc.message)
            await asyncio.sleep(_OUTBOX_SWEEP_INTERVAL_S)

    async def sweep(self) -> int:
        """Publish the due outbox entries (claimed first, up to a batch per job shard); returns how many were
        due."""
        now = now_ms()
        claimed = await self._store.claim_outbox(now, self._lease_s, _OUTBOX_BATCH)
        for job_id in claimed:
            try:
                entry = await self._store.outbox_entry(job_id)
            except SchemaError as exc:
                log.error("job %s: its stored request does not decode (%s); it cannot be published", job_id, exc)
                await self._store.published(job_id)
                continue
            if entry is None:  # published by its gateway meanwhile, or gone with the job's TTL
                await self._store.published(job_id)
                continue
            topic, request = entry
            if request.expired(now):  # the job reads as expired; a worker would only answer DEADLINE_EXCEEDED
                log.info("job %s left the outbox unpublished: its deadline has passed", job_id)
                await self._store.published(job_id)
                continue
            try:
                for record_topic, record in _outboxed(self._store.names, topic, request):
                    await self._publisher.publish(record_topic, record)
            except BackendDownError:
                raise
            except FleetError as exc:  # e.g. over this gateway's record limit: it can never be published here
                log.error("job %s cannot be published from the outbox: %s", job_id, exc.message)
                await self._store.published(job_id)
                continue
            await self._store.published(job_id)
            log.info("job %s published by the outbox sweep", job_id)
        return len(claimed)


def _outboxed(names: Names, topic: str, request: InferenceRequest) -> list[tuple[str, InferenceRequest]]:
    """What an outbox entry publishes: its request, or for a pipeline job every entry step's request (an entry
    step that ran already drops its new record: `workers.steps`)."""
    route = request.reply.route
    if route is None:
        return [(topic, request)]
    try:
        requests = restart_requests(request)
    except SchemaError:  # stored without the pipeline's inputs (an older gateway): the stored entry step alone
        return [(topic, request)]
    return [(names.request_topic(r.model, route.lane), r) for r in requests]
