"""The async-job outbox: a job that was stored is published even when its gateway did not get to (it died,
or its publish timed out), a timed-out publish keeps the job, and the idempotent replay stays true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway import Gateway, GatewaySettings
from gateway.errors import BackendDownError, error_middleware
from gateway.job_routes import JobRoutes
from gateway.jobs import JobStore
from gateway.protocol import parse_infer
from gateway.publisher import RequestPublisher
from schemas import InferenceRequest, ModelRecord, Names, now_ms
from tests.conftest import REDIS_KINDS, single_or_cluster

from .conftest import serve_one

#: Every test here runs on one Redis server and on a 3-master Redis Cluster.
redis_url = pytest.fixture(params=REDIS_KINDS, name="redis_url")(single_or_cluster)

INFER = "/v2/models/tiny/infer?async=true"
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


class DiesBeforePublishing(RequestPublisher):
    """A gateway that is killed after storing a job and before publishing it: its publish never returns."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reached = asyncio.Event()
        self._stopped = asyncio.Event()

    async def publish(self, topic: str, request: InferenceRequest) -> None:
        self.reached.set()
        await self._stopped.wait()  # until the test ends (then the handler ends too, instead of leaking)
        raise BackendDownError("kafka", "the gateway was killed")

    async def stop(self) -> None:
        self._stopped.set()
        await super().stop()


class LandsButTimesOut(RequestPublisher):
    """The record reaches the broker, but its acknowledgement comes after the publish timeout."""

    async def publish(self, topic: str, request: InferenceRequest) -> None:
        await super().publish(topic, request)
        raise BackendDownError("kafka", "publish took longer than 1 s")


Harness = Callable[[RequestPublisher], Awaitable[str]]


@pytest.fixture
async def submit_only(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, redis_client: Any
) -> AsyncIterator[Harness]:
    """Starts a gateway's async-submit path (real Redis job store, the given publisher, connected to the real
    broker) on a free port; returns its URL. It runs no outbox sweep, as if it died right after answering."""
    runners: list[web.AppRunner] = []
    publishers: list[RequestPublisher] = []

    async def start(publisher: RequestPublisher) -> str:
        publishers.append(publisher)
        await publisher.start()
        deadline = time.monotonic() + 10
        while not publisher.connected:
            assert time.monotonic() < deadline, "the publisher did not connect to the broker"
            await asyncio.sleep(0.02)
        routes = JobRoutes(gateway_settings, names, JobStore(redis_client, names, 1.0), publisher)

        async def submit(request: web.Request) -> web.Response:
            raw = await request.read()
            return await routes.submit(request, registered, parse_infer(raw, None), raw, now_ms(), 30_000.0)

        app = web.Application(middlewares=[error_middleware])
        app.router.add_post("/v2/models/tiny/infer", submit)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        runners.append(runner)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for publisher in publishers:
        await publisher.stop()
    for runner in runners:
        await runner.cleanup()


async def _submit(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, dict[str, Any], Any]:
    async with http.post(url + INFER, json=BODY, headers={"Idempotency-Key": key}) as resp:
        return resp.status, await resp.json(), resp.headers


async def _job(http: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    async with http.get(f"{url}/v2/jobs/{job_id}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]


async def _outbox_empties(redis: Any, names: Names, job_id: str) -> None:
    deadline = time.monotonic() + 10
    outbox = names.job_outbox_key(names.job_shard(job_id))
    while await redis.zcard(outbox) or await redis.exists(names.job_request_key(job_id)):
        assert time.monotonic() < deadline, "the published job is still in the outbox"
        await asyncio.sleep(0.02)


async def test_a_job_stored_by_a_gateway_that_died_before_publishing_is_published_by_another(
    submit_only: Harness,
    gateway: Gateway,
    gateway_settings: GatewaySettings,
    requests_topic: Any,
    redis_client: Any,
    names: Names,
    http: aiohttp.ClientSession,
) -> None:
    dying = DiesBeforePublishing(gateway_settings.fleet.kafka, 1.0)
    dying_url = await submit_only(dying)
    in_flight = asyncio.create_task(_submit(http, dying_url, "k-dead"))
    async with asyncio.timeout(10):
        await dying.reached.wait()  # stored; the gateway "dies" here: its client never gets an answer
    in_flight.cancel()

    # The client retries on another gateway: the replay names the stored job...
    status, replay, headers = await _submit(http, gateway.url, "k-dead")
    assert status == 202 and headers["Idempotent-Replayed"] == "true", replay
    job_id = replay["job_id"]
    # ...and that job is published (by the other gateway's outbox sweep) and answered.
    _, request = await serve_one(requests_topic, redis_client, names)
    assert request.id == job_id
    assert (await _job(http, gateway.url, job_id))["status"] == "done"
    await _outbox_empties(redis_client, names, job_id)


async def test_a_publish_that_times_out_keeps_the_job_and_a_retry_replays_it(
    submit_only: Harness,
    gateway: Gateway,
    gateway_settings: GatewaySettings,
    requests_topic: Any,
    redis_client: Any,
    names: Names,
    http: aiohttp.ClientSession,
) -> None:
    url = await submit_only(LandsButTimesOut(gateway_settings.fleet.kafka, 1.0))
    status, accepted, _ = await _submit(http, url, "k-slow")
    assert status == 202 and accepted["status"] == "pending", accepted  # accepted: it may have landed already
    job_id = accepted["job_id"]
    assert await redis_client.exists(names.job_key(job_id))

    status, replay, headers = await _submit(http, gateway.url, "k-slow")  # the client's retry: same job
    assert status == 202 and headers["Idempotent-Replayed"] == "true" and replay["job_id"] == job_id

    _, request = await serve_one(requests_topic, redis_client, names)
    assert request.id == job_id
    assert (await _job(http, gateway.url, job_id))["status"] == "done"
    await _outbox_empties(redis_client, names, job_id)  # the sweep republished it (a duplicate the worker drops)


async def test_a_request_that_can_never_be_published_is_forgotten(
    submit_only: Harness,
    gateway_settings: GatewaySettings,
    redis_client: Any,
    names: Names,
    http: aiohttp.ClientSession,
) -> None:
    tiny_records = replace(gateway_settings.fleet.kafka, max_request_bytes=200)
    url = await submit_only(RequestPublisher(tiny_records, 1.0))
    status, answer, _ = await _submit(http, url, "k-big")
    assert status == 413 and answer["code"] == "PAYLOAD_TOO_LARGE", answer
    leftovers = [k async for k in redis_client.scan_iter(match=f"{names.namespace}:*:job*")]
    leftovers += [k async for k in redis_client.scan_iter(match=f"{names.namespace}:*:idem:*")]
    for shard in names.job_shards:
        leftovers += [k for k in [names.job_outbox_key(shard)] if await redis_client.zcard(k)]
    assert leftovers == []  # no job, no request, no idempotency key, no outbox entry: a retry starts afresh


async def test_each_due_outbox_entry_is_claimed_by_one_sweep(redis_client: Any, names: Names) -> None:
    stores = [JobStore(redis_client, names, 1.0) for _ in range(4)]
    now = now_ms()
    for i in range(50):
        await redis_client.zadd(names.job_outbox_key(names.job_shard(f"job-{i}")), {f"job-{i}": now - 1000})
    await redis_client.zadd(names.job_outbox_key(names.job_shard("later")), {"later": now + 60_000})
    claims = await asyncio.gather(*(store.claim_outbox(now, 5.0, 100) for store in stores))
    claimed = [job_id for batch in claims for job_id in batch]
    assert sorted(claimed) == sorted(f"job-{i}" for i in range(50))  # each once, none twice, "later" not yet
    assert await stores[0].claim_outbox(now + 1000, 5.0, 100) == []  # leased: not due again before 5 s
    assert len(await stores[0].claim_outbox(now + 5000, 5.0, 100)) == 50
