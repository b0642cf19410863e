"""Claiming async jobs before running them: one Redis round trip per round that holds any.

Only requests with reply kind ``result`` (async jobs, polled later) are claimed; sync traffic pays
nothing. The ``claim`` script (``schemas.jobs.CLAIM_SCRIPT``) skips a request whose result is already
stored (the job was cancelled, or a redelivered request was answered before) and marks the others'
job hash ``started_ms``/``worker``, which is what makes a job show as running.
"""

from __future__ import annotations

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

        Raises BackendDownError when Redis cannot be reached (the round is retried).
        """
        jobs = [r for r in requests if r.reply.kind is ReplyKind.RESULT]
        if not jobs:
            return set()
        keys: list[str] = []
        for request in jobs:
            keys += [self._names.result_key(request.id), self._names.job_key(request.id)]
        try:
            flags = await self._script(keys=keys, args=[int(now_ms()), self._worker_id])
        except RedisError as exc:
            raise BackendDownError(f"Redis unavailable, jobs not claimed: {exc}") from exc
        skipped = {request.id for request, flag in zip(jobs, flags, strict=True) if not flag}
        if skipped:
            log.info("skipping %d request(s) that already have a result (cancelled or answered)", len(skipped))
        return skipped
