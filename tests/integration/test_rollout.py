"""Rollouts end to end: traffic switched 100/0 -> 90/10 -> 0/100 -> rollback under continuous load.

Real broker, Redis, an in-process gateway and worker. Every request (the continuous background load
and the measured requests of each phase) must answer 200, and the measured requests, sent with
deterministic ids, must land exactly on the version the split assigns to their id.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import BatchingConfig, FleetSettings, ModelRecord, ModelRegistry, Names
from schemas.traffic import TrafficSplit, bucket_of
from workers import Worker, WorkerSettings

pytestmark = pytest.mark.integration

TTL_S = 0.2  # the gateway's registry cache TTL: how long a switch may take to be seen
MEASURED = 200  # requests with deterministic ids per phase
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]}


@pytest.fixture
async def two_versions(tiny_model: ModelRecord, redis_client: Any, names: Names, tmp_path: Path) -> ModelRegistry:
    """``tiny`` version 1 (the default, from ``tiny_model``) and a different version 2."""
    registry = ModelRegistry(redis_client, names)
    v2 = build_record(
        "tiny", "2", tiny_mlp(tmp_path / "tiny2.onnx", seed=2), batching=BatchingConfig(32, max_queue_delay_ms=5)
    )
    await registry.register(v2)
    return registry


@pytest.fixture
async def fast_gateway(fleet_settings: FleetSettings) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(fleet=fleet_settings, port=0, default_timeout_s=20.0, registry_cache_ttl_s=TTL_S)
    async with Gateway(settings) as gw:
        await gw.wait_ready()
        yield gw


async def infer(http: aiohttp.ClientSession, url: str, request_id: str | None, *, header: bool = False) -> Any:
    """One unversioned request; the id goes in the body (or the X-Request-Id header). Returns (status, version)."""
    body: dict[str, Any] = dict(BODY)
    headers = {}
    if request_id is not None and header:
        headers["X-Request-Id"] = request_id
    elif request_id is not None:
        body["id"] = request_id
    async with http.post(f"{url}/v2/models/tiny/infer", json=body, headers=headers) as response:
        answer = await response.json()
        return response.status, answer.get("model_version", answer.get("error"))


async def wait_serving(http: aiohttp.ClientSession, url: str, request_id: str, version: str) -> None:
    """Readiness of a switch: the request id that tells the phases apart answers from ``version``."""
    for _ in range(200):
        status, answered = await infer(http, url, request_id)
        assert status == 200, answered
        if answered == version:
            return
        await asyncio.sleep(TTL_S / 4)
    raise AssertionError(f"{request_id} still not served by version {version}")


async def test_switches_lose_no_request_and_follow_the_split(
    fast_gateway: Gateway, two_versions: ModelRegistry, fleet_settings: FleetSettings
) -> None:
    registry = two_versions
    url = fast_gateway.url
    # Probe ids that tell the phases apart: one lands on v2 under 90/10, the other on v1.
    canary_id = next(f"probe-{i}" for i in itertools.count() if bucket_of(f"probe-{i}") >= 90)
    main_id = next(f"probe-{i}" for i in itertools.count() if bucket_of(f"probe-{i}") < 90)
    background: list[tuple[int, Any]] = []
    stop = asyncio.Event()

    async def load(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            background.append(await infer(http, url, None))

    async with (
        Worker(WorkerSettings(models=("tiny",), fleet=fleet_settings)) as worker,
        aiohttp.ClientSession() as http,
    ):
        await worker.wait_ready(30)
        senders = [asyncio.create_task(load(http)) for _ in range(4)]
        measured: dict[str, Counter[str]] = {}

        async def phase(name: str, split: TrafficSplit, probe: tuple[str, str]) -> None:
            await wait_serving(http, url, *probe)
            ids = [f"{name}-{i}" for i in range(MEASURED)]
            answers = await asyncio.gather(*(infer(http, url, i, header=n % 2 == 1) for n, i in enumerate(ids)))
            assert all(status == 200 for status, _ in answers), answers
            assert [version for _, version in answers] == [split.pick(i) for i in ids], name  # retries: same version
            measured[name] = Counter(version for _, version in answers)

        try:
            await registry.set_traffic("tiny", TrafficSplit.parse(["1=100", "2=0"]))
            await phase("all-v1", TrafficSplit.parse(["1=100", "2=0"]), (canary_id, "1"))
            await registry.set_traffic("tiny", TrafficSplit.parse(["1=90", "2=10"]))
            await phase("canary", TrafficSplit.parse(["1=90", "2=10"]), (canary_id, "2"))
            await registry.set_traffic("tiny", TrafficSplit.parse(["1=0", "2=100"]))
            await phase("all-v2", TrafficSplit.parse(["1=0", "2=100"]), (main_id, "2"))
            async with http.post(f"{url}/v2/models/tiny/versions/1/infer", json=BODY) as response:
                assert response.status == 200  # a request that names its version is never split
                assert (await response.json())["model_version"] == "1"
            assert await registry.rollback("tiny") == ("1", "1")
            await phase("rolled-back", TrafficSplit.parse(["1=100"]), (main_id, "1"))
        finally:
            stop.set()
            await asyncio.gather(*senders)
        async with http.get(f"{url}/metrics") as response:
            metrics = await response.text()

    assert measured["all-v1"] == Counter({"1": MEASURED})
    assert 0.05 * MEASURED <= measured["canary"]["2"] <= 0.15 * MEASURED, measured["canary"]
    assert measured["all-v2"] == Counter({"2": MEASURED})
    assert measured["rolled-back"] == Counter({"1": MEASURED})
    assert len(background) > 50 and all(status == 200 for status, _ in background), Counter(background)
    assert {version for _, version in background} == {"1", "2"}
    assert await registry.traffic("tiny") is None and await registry.default_version("tiny") == "1"
    for version in ("1", "2"):  # per-version metrics, so a canary can be compared with its baseline
        assert f'fleet_gateway_request_success_total{{model="tiny",version="{version}"}}' in metrics
        assert f'fleet_gateway_request_duration_seconds_count{{model="tiny",version="{version}"}}' in metrics
