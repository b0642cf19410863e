"""Completion webhooks of async jobs: the gateways POST each finished job's document to its callback URL.

Who sees completion: whoever stores a job's first result (the worker's ``deliver`` script, or the
cancel script) appends the job id to its job shard's ``names.callbacks_stream(shard)`` in the same script
when the job hash names a ``callback_url`` — so an announcement exists exactly when a first result does,
and nobody polls. Every gateway with ``webhooks`` on runs one dispatcher in consumer group ``webhooks`` on
every shard's stream (one reader per shard: on a Redis Cluster each stream is in its own hash slot): it
reads new entries (``XREADGROUP``), delivers each in its own task (at most ``webhook_concurrency``
at once) with retries — ``webhook_backoff_s`` doubling up to ``webhook_backoff_max_s``, at most
``webhook_max_attempts`` tries, each bounded by ``webhook_timeout_s`` — then ``XACK``s it (a delivery
given up is logged). Entries left unacknowledged by a gateway that died are taken over with
``XAUTOCLAIM`` once idle longer than a whole delivery can take. Delivery is at least once: the POST
carries ``X-Fleet-Job-Id`` (and ``X-Fleet-Delivery-Attempt``) so receivers can drop repeats; any 2xx
answer counts as delivered.

A job nobody answers (no worker ever took it, or the one that did died and no other took it over) would
never be announced: every second the dispatcher also sweeps each shard's ``names.job_deadlines_key`` and gives the jobs
unanswered ``webhook_expiry_grace_s`` after their deadline a ``DEADLINE_EXCEEDED`` result
(``schemas.jobs.EXPIRE_SCRIPT``: one gateway wins each job), which announces them like any other result.

Both loops are supervised (``gateway.jobs.supervise``): an unexpected error (a bug, not an outage, which
each loop handles itself) is logged with its traceback and the loop starts again after a backoff, so one
bad iteration never ends webhook delivery for the life of the gateway. A delivery that crashes is logged
the same way and stays pending in the group, to be taken over like one of a gateway that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from typing import Any

import aiohttp
from redis.exceptions import RedisError, ResponseError

from common import BackoffPolicy, supervise
from schemas import ErrorCode, ErrorInfo, FleetError, InferenceResponse, Names, now_ms
from schemas.jobs import CALLBACK_FIELD, CALLBACK_GROUP

from .errors import BackendDownError
from .job_routes import job_document, job_result_ttl_s
from .jobs import JobStore
from .settings import GatewaySettings

log = logging.getLogger("fleet.gateway")

JOB_ID_HEADER = "X-Fleet-Job-Id"
ATTEMPT_HEADER = "X-Fleet-Delivery-Attempt"
_READ_BLOCK_MS = 1000
_ERROR_PAUSE_S = 1.0
_SWEEP_INTERVAL_S = 1.0
_SWEEP_BATCH = 100


def retry_policy(settings: GatewaySettings) -> BackoffPolicy:
    """Pauses between the tries of one delivery: ``webhook_backoff_s`` doubling up to ``webhook_backoff_max_s``."""
    return BackoffPolicy(settings.webhook_backoff_s, settings.webhook_backoff_max_s)


def delivery_budget_s(settings: GatewaySettings) -> float:
    """Longest one delivery can take (every try timing out, every pause taken)."""
    attempts, policy = settings.webhook_max_attempts, retry_policy(settings)
    return attempts * settings.webhook_timeout_s + sum(policy.delay(n) for n in range(1, attempts))


class WebhookDispatcher:
    """Reads the callbacks stream and POSTs job documents; ``start()``/``stop()`` with the gateway."""

    def __init__(self, settings: GatewaySettings, names: Names, redis: Any, consumer: str) -> None:
        self._settings = settings
        self._names = names
        self._redis = redis
        self._consumer = consumer
        self._store = JobStore(redis, names, settings.backend_timeout_s)
        self._deliveries: set[asyncio.Task[None]] = set()
        self._readers: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        #: Entries idle longer than this belong to a gateway that stopped: take them over.
        self._reclaim_ms = int((delivery_budget_s(settings) + 10.0) * 1000)

    async def start(self) -> None:
        """Start the reading routine (the consumer group is created on first use)."""
        if not self._readers:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._settings.webhook_timeout_s))
            self._readers = [
                asyncio.create_task(
                    supervise("gateway webhook dispatcher", functools.partial(self._routine, shard), log),
                    name=f"fleet-gateway-webhooks-{shard}",
                )
                for shard in self._names.job_shards
            ]
            self._sweeper = asyncio.create_task(
                supervise("gateway webhook expiry sweep", self._sweep_routine, log), name="fleet-gateway-job-expiry"
            )

    async def stop(self) -> None:
        """Stop reading and cancel deliveries in progress (they stay pending and are taken over later)."""
        readers, self._readers = self._readers, []
        sweeper, self._sweeper = self._sweeper, None
        tasks = [t for t in (*readers, sweeper, *self._deliveries) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _routine(self, shard: int) -> None:
        stream = self._names.callbacks_stream(shard)
        group_ready = False  # also after a crash: the group may be what went wrong
        while True:
            try:
                if not group_ready:
                    await self._ensure_group(stream)
                    group_ready = True
                await self._reclaim(stream)
                # Every shard's reader shares the delivery slots: each takes its part of the free ones.
                free = max(1, await self._free_slots() // len(self._names.job_shards))
                reply = await self._redis.xreadgroup(
                    CALLBACK_GROUP, self._consumer, {stream: ">"}, count=free, block=_READ_BLOCK_MS
                )
                for _, entries in reply or []:
                    self._spawn(stream, entries)
            except (RedisError, OSError) as exc:
                log.warning("webhooks: reading %s failed: %s", stream, exc)
                group_ready = False  # the stream (and its group) may be gone: NOGROUP
                await asyncio.sleep(_ERROR_PAUSE_S)

    async def _sweep_routine(self) -> None:
        while True:
            try:
                while await self.sweep() >= _SWEEP_BATCH:  # more may be due: go on at once
                    pass
            except FleetError as exc:  # Redis down or slow (503), a stored result that does not decode
                log.warning("webhooks: job expiry sweep failed: %s", exc.message)
            await asyncio.sleep(_SWEEP_INTERVAL_S)

    async def sweep(self) -> int:
        """Expire the due jobs no worker answered (their webhook then fires); returns how many were due."""
        due = await self._store.due(now_ms(), _SWEEP_BATCH)
        grace = self._settings.webhook_expiry_grace_s
        result_ttl_s = job_result_ttl_s(self._settings)
        for job_id in due:
            state = await self._store.read(job_id)
            expired = b""
            if state is not None:
                reason = ErrorInfo(
                    ErrorCode.DEADLINE_EXCEEDED, f"no worker answered within {grace:g} s after the job's deadline"
                )
                expired = InferenceResponse(job_id, state.model, state.version, error=reason).to_bytes()
            if await self._store.expire(job_id, expired, result_ttl_s) == "expired":
                log.info("webhooks: job %s expired unanswered", job_id)
        return len(due)

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self._redis.xgroup_create(stream, CALLBACK_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _reclaim(self, stream: str) -> None:
        reply = await self._redis.xautoclaim(
            stream,
            CALLBACK_GROUP,
            self._consumer,
            min_idle_time=self._reclaim_ms,
            start_id="0-0",
            count=self._settings.webhook_concurrency,
        )
        self._spawn(stream, reply[1] if reply else [])

    async def _free_slots(self) -> int:
        """Wait until fewer than ``webhook_concurrency`` deliveries run; how many more may start."""
        while len(self._deliveries) >= self._settings.webhook_concurrency:
            await asyncio.wait(set(self._deliveries), return_when=asyncio.FIRST_COMPLETED)
        return self._settings.webhook_concurrency - len(self._deliveries)

    def _spawn(self, stream: str, entries: list[tuple[Any, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in entries:
            if not fields:  # deleted entry left in the pending list
                continue
            job_id = fields.get(CALLBACK_FIELD.encode(), b"").decode(errors="replace")
            task = asyncio.create_task(self._deliver(stream, entry_id, job_id))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, stream: str, entry_id: Any, job_id: str) -> None:
        try:
            await self._deliver_once(stream, entry_id, job_id)
        except Exception:  # a bug: left pending, so another try comes with a takeover (XAUTOCLAIM)
            log.exception("webhooks: delivering job %s crashed; it stays pending", job_id)

    async def _deliver_once(self, stream: str, entry_id: Any, job_id: str) -> None:
        try:
            state = await self._store.read(job_id) if job_id else None
        except BackendDownError as exc:
            log.warning("webhooks: job %s not read (%s); retried after a takeover", job_id, exc.message)
            return  # stays pending: reclaimed once idle
        if state is None or not state.callback_url:
            log.info("webhooks: job %s is gone (TTL); nothing to deliver", job_id)
        else:
            await self._post(job_id, state.callback_url, job_document(state, now_ms()))
        with contextlib.suppress(RedisError, OSError):
            await self._redis.xack(stream, CALLBACK_GROUP, entry_id)

    async def _post(self, job_id: str, url: str, document: dict[str, Any]) -> None:
        settings = self._settings
        body = json.dumps(document, separators=(",", ":")).encode()
        session = self._session
        assert session is not None
        for attempt in range(1, settings.webhook_max_attempts + 1):
            headers = {"Content-Type": "application/json", JOB_ID_HEADER: job_id, ATTEMPT_HEADER: str(attempt)}
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = str(exc) or type(exc).__name__
            if attempt == settings.webhook_max_attempts:
                log.error("webhooks: job %s not delivered to %s after %d tries: %s", job_id, url, attempt, problem)
                return
            pause = retry_policy(settings).delay(attempt)
            log.info("webhooks: job %s try %d to %s failed (%s); again in %.2fs", job_id, attempt, url, problem, pause)
            await asyncio.sleep(pause)
