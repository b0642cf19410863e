"""Model readiness answers "would a request be served?", and a sync request nothing can serve fails at once.

The rules as a table (`judge`), then each case end to end against the real Redis, announced by the real
components: a worker's heartbeat, the autoscaler's leader lease and pins, a worker's recorded load failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
import numpy as np
import pytest

from autoscaler.leader import LeaderLease
from autoscaler.overrides import PinStore
from gateway import Gateway
from gateway.protocol import TIMEOUT_HEADER
from gateway.serviceability import FleetSnapshot, Serviceability, ServiceabilityView, VersionFacts, judge
from schemas import ErrorCode, ModelRecord, Names, now_ms
from schemas.load_failures import LoadFailure, LoadFailures
from schemas.residency import ResidentModel, WorkerResidency
from workers.heartbeat import Heartbeat

from .conftest import STAND_IN, serve_one

FAIL = LoadFailure("artifact sha256 mismatch", 1_700_000_000_000.0, "w1")

SERVED, STARTING, UNAVAILABLE = Serviceability.SERVED, Serviceability.STARTING, Serviceability.UNAVAILABLE
LOAD_FAILED, NOT_SERVABLE = ErrorCode.MODEL_LOAD_FAILED, ErrorCode.MODEL_UNAVAILABLE


@pytest.mark.parametrize(
    ("fleet", "facts", "state", "code", "reason"),
    [
        (FleetSnapshot(announced=frozenset({"tiny"})), VersionFacts(), SERVED, None, ""),
        (FleetSnapshot(resident=frozenset({("tiny", "1")})), VersionFacts(failure=FAIL), SERVED, None, ""),
        (FleetSnapshot(announced=frozenset({"tiny"})), VersionFacts(failure=FAIL), UNAVAILABLE, LOAD_FAILED, "sha256"),
        (FleetSnapshot(autoscaler_alive=True), VersionFacts(), STARTING, None, "the autoscaler starts one"),
        (FleetSnapshot(autoscaler_alive=True, pins={"tiny": 0}), VersionFacts(), UNAVAILABLE, NOT_SERVABLE, "pinned"),
        (FleetSnapshot(autoscaler_alive=True), VersionFacts(pinned_to_zero=True), UNAVAILABLE, NOT_SERVABLE, "pinned"),
        (FleetSnapshot(autoscaler_alive=True, pins={"tiny": 2}), VersionFacts(), STARTING, None, ""),
        (FleetSnapshot(), VersionFacts(), UNAVAILABLE, NOT_SERVABLE, "no autoscaler"),
        (FleetSnapshot(announced=frozenset({"other"})), VersionFacts(), UNAVAILABLE, NOT_SERVABLE, "no autoscaler"),
        (
            FleetSnapshot(autoscaler_alive=True),
            VersionFacts(placement_failed="needs 900 MB, the largest worker has 500 MB"),
            UNAVAILABLE,
            NOT_SERVABLE,
            "cannot be placed on any worker: needs 900 MB",
        ),
    ],
)
def test_judge(
    record: ModelRecord,
    fleet: FleetSnapshot,
    facts: VersionFacts,
    state: Serviceability,
    code: ErrorCode | None,
    reason: str,
) -> None:
    verdict = judge(record, fleet, facts)
    assert (verdict.state, verdict.code) == (state, code)
    assert reason in verdict.reason
    assert verdict.ready is (state is SERVED)


@pytest.mark.parametrize("fleet", [FleetSnapshot(), FleetSnapshot(announced=frozenset({"other"}))])
def test_no_worker_and_no_autoscaler_waits_when_a_worker_is_expected(record: ModelRecord, fleet: FleetSnapshot) -> None:
    verdict = judge(record, fleet, VersionFacts(), awaited="waiting for one to return")
    assert verdict.state is STARTING and verdict.reason.endswith("waiting for one to return")
    # What nothing can cure stays unavailable.
    failed = judge(record, fleet, VersionFacts(failure=FAIL), awaited="waiting for one to return")
    assert failed.state is UNAVAILABLE and failed.code is LOAD_FAILED


async def test_a_model_served_a_moment_ago_waits_for_its_worker_to_return(
    redis_client: Any, names: Names, record: ModelRecord
) -> None:
    """A worker restarting (no autoscaler): requests wait for it within the grace, and fail fast after."""
    clock = [1000.0]
    view = ServiceabilityView(redis_client, names, ttl_s=0.001, return_grace_s=60.0, clock=lambda: clock[0])
    never_served = ServiceabilityView(redis_client, names, ttl_s=0.001, return_grace_s=60.0)
    beat = Heartbeat(redis_client, names, "w1", [record.name], 3600.0, list, lambda: "cpu")
    await beat.beat()
    assert (await view.verdict(record)).state is SERVED
    await redis_client.delete(names.worker_key("w1"))  # the worker stopped; its replacement is not up yet
    clock[0] += 30.0
    verdict = await view.verdict(record)
    assert verdict.state is STARTING and "a worker served it 30 s ago" in verdict.reason
    assert (await never_served.verdict(record)).state is UNAVAILABLE
    clock[0] += 31.0
    assert (await view.verdict(record)).state is UNAVAILABLE


async def test_workers_scaled_outside_the_fleet_are_waited_for(
    redis_client: Any, names: Names, record: ModelRecord
) -> None:
    view = ServiceabilityView(redis_client, names, external_scaler=True)
    verdict = await view.verdict(record)
    assert verdict.state is STARTING and "FLEET_GATEWAY_EXTERNAL_SCALER" in verdict.reason


def test_a_max_replicas_label_of_zero_caps_the_model(record: ModelRecord) -> None:
    capped = dataclasses.replace(record, labels={**record.labels, "max_replicas": "0"})
    verdict = judge(capped, FleetSnapshot(autoscaler_alive=True), VersionFacts())
    assert verdict.state is UNAVAILABLE and "capped at 0 workers by its max_replicas label" in verdict.reason


# end to end: the gateway against the real Redis -------------------------------------------------------------


@pytest.fixture
async def no_worker(redis_client: Any, names: Names, gateway: Gateway) -> None:
    """The test-side worker that the conftest announces is gone (its heartbeat expired)."""
    await redis_client.delete(names.worker_key(STAND_IN))


def _url(gw: Gateway, path: str) -> str:
    return gw.url + path


async def _ready(http: aiohttp.ClientSession, gw: Gateway, version: str | None = None) -> tuple[int, dict[str, Any]]:
    path = "/v2/models/tiny" + (f"/versions/{version}" if version else "") + "/ready"
    async with http.get(_url(gw, path)) as response:
        return response.status, await response.json()


def _infer_body() -> dict[str, Any]:
    x = np.ones((1, 16), dtype=np.float32)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}]}


async def _infer(
    http: aiohttp.ClientSession, gw: Gateway, path: str = "/v2/models/tiny/infer", **headers: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(_url(gw, path), json=_infer_body(), headers=headers) as response:
        return response.status, await response.json()


async def test_a_served_model_is_ready(http: aiohttp.ClientSession, gateway: Gateway) -> None:
    status, body = await _ready(http, gateway)
    assert (status, body) == (200, {"name": "tiny", "version": "1", "ready": True})


@pytest.mark.usefixtures("no_worker")
async def test_no_worker_and_no_autoscaler_is_not_ready_and_sync_requests_fail_at_once(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    status, body = await _ready(http, gateway)
    assert status == 503 and body["ready"] is False and body["code"] == "MODEL_UNAVAILABLE"
    assert body["error"] == "no worker serves model 'tiny' and no autoscaler is running to start one"
    # Before: the request waited the whole timeout (here 60 s, longer than the test's own limit) for a 504.
    status, body = await _infer(http, gateway, **{TIMEOUT_HEADER: "60000"})
    assert status == 503 and body["code"] == "MODEL_UNAVAILABLE" and "no autoscaler" in body["error"]
    # An async job is still accepted: it waits in Kafka for a worker.
    status, body = await _infer(http, gateway, "/v2/models/tiny/infer?async=true")
    assert status == 202, body


@pytest.mark.usefixtures("no_worker")
async def test_an_autoscaler_and_no_worker_is_not_ready_but_a_request_waits_for_the_worker(
    http: aiohttp.ClientSession, gateway: Gateway, redis_client: Any, names: Names, requests_topic: Any
) -> None:
    lease = LeaderLease(redis_client, names, lease_s=60.0)
    assert await lease.try_hold()
    try:
        status, body = await _ready(http, gateway)
        assert status == 503 and body["ready"] is False and body["state"] == "starting"
        # Scale from zero: the request waits, and the worker the autoscaler started answers it.
        answered = asyncio.create_task(_infer(http, gateway))
        await serve_one(requests_topic, redis_client, names)
        status, body = await answered
        assert status == 200 and body["outputs"][0]["name"] == "y"
    finally:
        await lease.stop()


@pytest.mark.usefixtures("no_worker")
async def test_a_model_pinned_to_zero_workers_is_not_ready_and_sync_requests_fail_at_once(
    http: aiohttp.ClientSession, gateway: Gateway, redis_client: Any, names: Names
) -> None:
    lease = LeaderLease(redis_client, names, lease_s=60.0)
    assert await lease.try_hold()
    try:
        await PinStore(redis_client, names).pin("tiny", 0)
        status, body = await _ready(http, gateway)
        assert status == 503 and body["code"] == "MODEL_UNAVAILABLE"
        assert body["error"].startswith("model 'tiny' is pinned to 0 workers")
        status, body = await _infer(http, gateway, **{TIMEOUT_HEADER: "60000"})
        assert status == 503 and body["code"] == "MODEL_UNAVAILABLE" and "pinned to 0 workers" in body["error"]
    finally:
        await lease.stop()


async def test_a_version_that_failed_to_load_is_not_ready_and_sync_requests_fail_at_once(
    http: aiohttp.ClientSession, gateway: Gateway, redis_client: Any, names: Names
) -> None:
    await LoadFailures(redis_client, names, "w1").record("tiny", "1", "artifact sha256 mismatch", now_ms())
    status, body = await _ready(http, gateway, "1")
    assert status == 503 and body["code"] == "MODEL_LOAD_FAILED" and body["version"] == "1"
    assert "failed to load on worker w1" in body["error"] and body["error"].endswith("artifact sha256 mismatch")
    status, body = await _ready(http, gateway)  # the default is version 1
    assert status == 503 and body["code"] == "MODEL_LOAD_FAILED"
    status, body = await _ready(http, gateway, "2")  # other versions are not affected
    assert status == 200 and body["ready"] is True
    status, body = await _infer(http, gateway, "/v2/models/tiny/versions/1/infer", **{TIMEOUT_HEADER: "60000"})
    assert status == 503 and body["code"] == "MODEL_LOAD_FAILED" and "sha256 mismatch" in body["error"]


async def test_a_version_resident_on_a_worker_is_ready_despite_an_older_failure(
    http: aiohttp.ClientSession, gateway: Gateway, redis_client: Any, names: Names
) -> None:
    await LoadFailures(redis_client, names, "w1").record("tiny", "1", "out of memory", now_ms())
    heartbeat = Heartbeat(redis_client, names, "w2", ["other"], 3600.0, list, lambda: "cpu")
    assert await heartbeat.beat()
    resident = ResidentModel("tiny", "1", 1000, now_ms(), now_ms())
    state = WorkerResidency("w2", None, None, 1000, (resident,), now_ms())
    await redis_client.set(names.residency_key("w2"), state.to_bytes())
    status, body = await _ready(http, gateway, "1")
    assert status == 200 and body["ready"] is True


async def test_a_worker_that_starts_is_seen_at_once(
    http: aiohttp.ClientSession, gateway: Gateway, redis_client: Any, names: Names
) -> None:
    await redis_client.delete(names.worker_key(STAND_IN))
    assert (await _ready(http, gateway))[0] == 503
    # A negative answer is never served from the cache: the next question reads Redis again.
    assert await Heartbeat(redis_client, names, "w3", ["tiny"], 3600.0, list, lambda: "cpu").beat()
    assert (await _ready(http, gateway))[0] == 200
