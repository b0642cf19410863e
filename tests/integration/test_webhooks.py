"""Completion webhooks of async jobs: delivered with retries, for done and cancelled jobs, off by default."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from gateway import Gateway, GatewaySettings
from gateway.webhooks import delivery_budget_s, retry_policy
from schemas import FleetSettings, ModelRecord, Names
from schemas.jobs import CALLBACK_GROUP
from tests.conftest import REDIS_KINDS, single_or_cluster
from workers import Worker, WorkerSettings

#: Every test here runs on one Redis server and on a 3-master Redis Cluster.
redis_url = pytest.fixture(params=REDIS_KINDS, name="redis_url")(single_or_cluster)


class Receiver:
    """A local HTTP server that records webhook POSTs and fails the first ``failures`` of them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], Any]] = []
        self.arrived = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.json()))
        self.arrived.set()
        if len(self.calls) <= self.failures:
            return web.Response(status=500)
        return web.Response(status=204)

    async def wait_calls(self, count: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.calls) < count:
            assert time.monotonic() < deadline, f"{len(self.calls)} webhook calls, expected {count}"
            self.arrived.clear()
            with_timeout = asyncio.wait_for(self.arrived.wait(), max(0.01, deadline - time.monotonic()))
            try:
                await with_timeout
            except TimeoutError:
                pass


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver(failures=2)
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    recv.url = f"http://127.0.0.1:{port}/hook"
    yield recv
    await runner.cleanup()


@pytest.fixture
async def hook_gateway(fleet_settings: FleetSettings, tiny_model: ModelRecord) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        fleet=fleet_settings, port=0, webhooks=True, webhook_backoff_s=0.05, webhook_max_attempts=4
    )
    async with Gateway(settings) as gw:
        await gw.wait_ready()
        yield gw


def _body() -> dict[str, Any]:
    x = np.ones((1, 16), dtype=np.float32)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}]}


async def _pending(redis: Any, names: Names) -> int:
    pending = 0
    for shard in names.job_shards:
        if await redis.exists(names.callbacks_stream(shard)):
            pending += int((await redis.xpending(names.callbacks_stream(shard), CALLBACK_GROUP))["pending"])
    return pending


async def test_done_job_is_delivered_after_retries(
    hook_gateway: Gateway, receiver: Receiver, fleet_settings: FleetSettings, redis_client: Any, names: Names
) -> None:
    async with (
        Worker(WorkerSettings(models=("tiny",), fleet=fleet_settings)) as worker,
        aiohttp.ClientSession() as session,
    ):
        await worker.wait_ready(30)
        url = f"{hook_gateway.url}/v2/models/tiny/infer?async=true"
        async with session.post(url, json=_body(), headers={"X-Callback-Url": receiver.url}) as r:
            assert r.status == 202, await r.text()
            job_id = (await r.json())["job_id"]
        await receiver.wait_calls(3)  # two failures, then delivered
    attempts = [headers["X-Fleet-Delivery-Attempt"] for headers, _ in receiver.calls]
    assert attempts == ["1", "2", "3"]
    headers, document = receiver.calls[-1]
    assert headers["X-Fleet-Job-Id"] == job_id
    assert document["job_id"] == job_id and document["status"] == "done"
    assert document["result"]["outputs"][0]["shape"] == [1, 4]
    deadline = time.monotonic() + 10
    while await _pending(redis_client, names):  # acknowledged once delivered
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert len(receiver.calls) == 3


async def test_cancelled_job_is_announced_and_given_up_after_max_attempts(
    hook_gateway: Gateway, receiver: Receiver, redis_client: Any, names: Names
) -> None:
    receiver.failures = 100  # never accepts
    async with aiohttp.ClientSession() as session:
        url = f"{hook_gateway.url}/v2/models/tiny/infer?async=true&callback_url={receiver.url}"
        async with session.post(url, json=_body()) as r:
            assert r.status == 202, await r.text()
            job_id = (await r.json())["job_id"]
        async with session.delete(f"{hook_gateway.url}/v2/jobs/{job_id}") as r:
            assert r.status == 200
        await receiver.wait_calls(4)
        deadline = time.monotonic() + 10
        while await _pending(redis_client, names):  # given up, acknowledged: no fifth try
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    assert len(receiver.calls) == 4
    assert all(document["status"] == "cancelled" for _, document in receiver.calls)


async def test_webhooks_are_refused_when_off_or_malformed(
    gateway: Gateway, hook_gateway: Gateway, tiny_model: ModelRecord
) -> None:
    async with aiohttp.ClientSession() as session:
        for url, callback in (
            (gateway.url, "http://127.0.0.1:9/hook"),  # off by default
            (hook_gateway.url, "ftp://example.com/x"),
            (hook_gateway.url, "/relative"),
        ):
            headers = {"X-Callback-Url": callback}
            async with session.post(f"{url}/v2/models/tiny/infer?async=true", json=_body(), headers=headers) as r:
                assert r.status == 400, callback
                assert (await r.json())["code"] == "INVALID_REQUEST"


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = retry_policy(GatewaySettings(webhook_backoff_s=0.5, webhook_backoff_max_s=3.0))
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    settings = GatewaySettings(webhook_max_attempts=3, webhook_backoff_s=1.0, webhook_timeout_s=2.0)
    assert delivery_budget_s(settings) == 3 * 2.0 + 1.0 + 2.0


async def test_a_job_no_worker_answers_is_announced_as_expired(
    fleet_settings: FleetSettings, tiny_model: ModelRecord, receiver: Receiver, redis_client: Any, names: Names
) -> None:
    receiver.failures = 0
    settings = GatewaySettings(fleet=fleet_settings, port=0, webhooks=True, webhook_expiry_grace_s=0.2)
    async with Gateway(settings) as gw, aiohttp.ClientSession() as session:  # no worker serves "tiny"
        await gw.wait_ready()
        url = f"{gw.url}/v2/models/tiny/infer?async=true"
        headers = {"X-Callback-Url": receiver.url, "X-Fleet-Timeout-Ms": "300"}
        async with session.post(url, json=_body(), headers=headers) as r:
            assert r.status == 202, await r.text()
            job_id = (await r.json())["job_id"]
        await receiver.wait_calls(1, timeout_s=10)  # deadline 0.3 s + grace 0.2 s + a sweep (1 s)
        async with session.get(f"{gw.url}/v2/jobs/{job_id}") as r:
            document = await r.json()
        await asyncio.sleep(1.5)  # later sweeps do not announce it again
    assert len(receiver.calls) == 1
    headers, announced = receiver.calls[0]
    assert headers["X-Fleet-Job-Id"] == job_id
    assert announced["status"] == document["status"] == "expired"
    assert announced["error"]["code"] == "DEADLINE_EXCEEDED" and "no worker answered" in announced["error"]["message"]
    assert await redis_client.zcard(names.job_deadlines_key(names.job_shard(job_id))) == 0
