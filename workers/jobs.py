"""Claiming async jobs before running them: one Redis round trip per round that holds any (a script call per
job shard, sent together).

Only requests with reply kind ``result`` (async jobs, polled later) and the steps of pipeline jobs are
claimed; sync traffic pays nothing. The ``claim`` script (``schemas.jobs.CLAIM_SCRIPT``) skips a request
whose result is already stored (the job was cancelled, or a redelivered request was answered before) and
marks the others' job hash ``started_ms``/``worker``, which is what makes a job show as running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from schemas import InferenceRequest, Names, ReplyKind, now_ms
from schemas.jobs import CLAIM_SCRIPT

from .errors import BackendDownError

log = logging.getLogger("fleet.workers")


class JobClaims:
    """Marks async jobs as started and tells which requests must not run."""

    def __init__(self, redis: Any, names: Names, worker_id: str) -> None:
        self._names = names
        self._worker_id = worker_id
        self._script = redis.register_script(CLAIM_SCRIPT)  # EVALSHA, loading the script on NOSCRIPT

    async def skipped(self, requests: Sequence[InferenceRequest]) -> set[str]:
        """Ids of the result-kind requests in ``requests`` that already have a result (do not run them).

        A pipeline job's step (reply kind ``step``, its caller's kind ``result``) is claimed for its job: the
        job reads as running from its first step on (``started_ms``/``worker`` name the latest step's), and a
        step of a job that has its result (cancelled, or answered) does not run.

        Raises BackendDownError when Redis cannot be reached (the round is retried).
        """
        jobs = [(r, job_id) for r in requests if (job_id := _job_of(r)) is not None]
        if not jobs:
            return set()
        by_shard: dict[int, list[tuple[InferenceRequest, str]]] = {}
        for request, job_id in jobs:  # one script call per job shard: its keys share one hash slot
            by_shard.setdefault(self._names.job_shard(job_id), []).append((request, job_id))
        args = [int(now_ms()), self._worker_id]
        calls = []
        for shard_jobs in by_shard.values():
            keys = [k for _, j in shard_jobs for k in (self._names.result_key(j), self._names.job_key(j))]
            calls.append(self._script(keys=keys, args=args))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        flags: list[Any] = []
        for outcome in outcomes:
            if isinstance(outcome, RedisError):
                raise BackendDownError(f"Redis unavailable, jobs not claimed: {outcome}") from outcome
            if isinstance(outcome, BaseException):
                raise outcome
            flags.append(outcome)
        skipped = {
            request.id
            for shard_jobs, shard_flags in zip(by_shard.values(), flags, strict=True)
            for (request, _), flag in zip(shard_jobs, shard_flags, strict=True)
            if not flag
        }
        if skipped:
            log.info("skipping %d request(s) that already have a result (cancelled or answered)", len(skipped))
        return skipped


def _job_of(request: InferenceRequest) -> str | None:
    """The async job ``request`` runs for: its own id (kind ``result``), a pipeline job's (a step of one)."""
    if request.reply.kind is ReplyKind.RESULT:
        return request.id
    route = request.reply.route
    if request.reply.kind is ReplyKind.STEP and route is not None and route.caller.kind is ReplyKind.RESULT:
        return route.request_id
    return None
