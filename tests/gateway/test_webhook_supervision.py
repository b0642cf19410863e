"""The webhook dispatcher's loops are supervised: an unexpected crash is logged with its traceback and the
loop runs again, so later webhooks are still delivered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway import GatewaySettings
from gateway.webhooks import JOB_ID_HEADER, WebhookDispatcher
from schemas import ErrorCode, ErrorInfo, FleetSettings, InferenceResponse, Names, now_ms
from schemas.jobs import CANCEL_SCRIPT, F_CALLBACK, F_CREATED, F_DEADLINE, F_MODEL, F_VERSION


class CrashesOnce:
    """The real Redis client, except that its first XREADGROUP raises an unexpected error (a bug, not an
    outage: no RedisError)."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self.crashed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("an unexpected bug in one iteration")
        return await self._redis.xreadgroup(*args, **kwargs)


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[str, list[str]]]:
    """A local webhook receiver: its URL and the job ids it was called for."""
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.headers[JOB_ID_HEADER])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", calls
    await runner.cleanup()


async def _cancel_job_with_webhook(redis: Any, names: Names, job_id: str, url: str) -> None:
    """A job with a webhook, cancelled by the gateway's own cancel script (which announces it)."""
    created = now_ms()
    await redis.hset(
        names.job_key(job_id),
        mapping={F_MODEL: "tiny", F_VERSION: "1", F_CREATED: repr(created), F_DEADLINE: repr(created + 60_000)},
    )
    await redis.hset(names.job_key(job_id), F_CALLBACK, url)
    cancelled = InferenceResponse(job_id, "tiny", "1", error=ErrorInfo(ErrorCode.CANCELLED, "cancelled"))
    script = redis.register_script(CANCEL_SCRIPT)
    keys = [names.job_key(job_id), names.result_key(job_id), names.callbacks_stream(names.job_shard(job_id))]
    assert await script(keys=keys, args=[cancelled.to_bytes(), 600, int(now_ms()), job_id]) == b"cancelled"


async def test_a_crash_in_the_dispatcher_loop_does_not_stop_later_webhooks(
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    hooks: tuple[str, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, calls = hooks
    settings = GatewaySettings(fleet=fleet_settings, port=0, webhooks=True)
    redis = CrashesOnce(redis_client)
    dispatcher = WebhookDispatcher(settings, names, redis, "test-gateway")
    with caplog.at_level(logging.ERROR, logger="fleet.gateway"):
        await dispatcher.start()
        try:
            await _cancel_job_with_webhook(redis_client, names, "job-1", url)
            deadline = time.monotonic() + 15
            while calls != ["job-1"]:
                assert time.monotonic() < deadline, f"webhook calls: {calls}"
                await asyncio.sleep(0.02)
        finally:
            await dispatcher.stop()
    assert redis.crashed
    crashes = [r for r in caplog.records if "loop crashed" in r.getMessage()]
    assert crashes and crashes[0].exc_info is not None  # logged with its traceback
