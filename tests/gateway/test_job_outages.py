"""Async jobs when a backend is down: 503 fast, and a job whose request was not published is not left behind."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp

from fleet.local.servers import free_port
from gateway import Gateway, GatewaySettings
from schemas import KafkaSettings, ModelRecord, Names, RedisSettings

INFER = "/v2/models/tiny/infer?async=true"
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


async def test_kafka_down_submit_is_503_and_leaves_no_job(
    gateway_settings: GatewaySettings,
    names: Names,
    registered: ModelRecord,
    http: aiohttp.ClientSession,
    redis_client: Any,
) -> None:
    dead = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    settings = replace(gateway_settings, fleet=replace(gateway_settings.fleet, kafka=dead))
    async with Gateway(settings, names=names) as gw:
        async with http.post(gw.url + INFER, json=BODY, headers={"Idempotency-Key": "k1"}) as resp:
            answer = await resp.json()
        assert resp.status == 503 and answer["code"] == "BACKEND_UNAVAILABLE" and "kafka" in answer["error"]
    leftovers = [k async for k in redis_client.scan_iter(match=f"{names.namespace}:*:job:*")]
    leftovers += [k async for k in redis_client.scan_iter(match=f"{names.namespace}:idem:*")]
    assert leftovers == []  # a retry with the same key creates the job afresh


async def test_redis_down_job_reads_are_503(
    gateway_settings: GatewaySettings, names: Names, http: aiohttp.ClientSession
) -> None:
    dead = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0")
    settings = replace(gateway_settings, fleet=replace(gateway_settings.fleet, redis=dead))
    async with Gateway(settings, names=names) as gw:
        for method in ("GET", "DELETE"):
            async with http.request(method, gw.url + "/v2/jobs/" + "a" * 32) as resp:
                answer = await resp.json()
            assert resp.status == 503 and answer["code"] == "BACKEND_UNAVAILABLE" and "redis" in answer["error"]
