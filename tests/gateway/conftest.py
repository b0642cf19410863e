"""Gateway fixtures: a registered tiny MLP, an in-process gateway on a free port, an HTTP client, and a
test-side stand-in for a worker that speaks the real contract (read the Kafka record, SET NX + XADD)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import FleetSettings, InferenceRequest, InferenceResponse, ModelRecord, ModelRegistry, Names, Tensor
from schemas.constants import REPLY_STREAM_MAXLEN, REPLY_STREAM_TTL_S, RESULT_TTL_S
from schemas.topics import ensure_model_topics
from workers.heartbeat import Heartbeat

#: Worker id of the test-side stand-in: its heartbeat says it serves "tiny".
STAND_IN = "stand-in"


@pytest.fixture(scope="session")
def record(tmp_path_factory: pytest.TempPathFactory) -> ModelRecord:
    """The tiny MLP (x: FP32[-1,16] -> y: FP32[-1,4]) as model "tiny" version "1"."""
    path: Path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    return build_record("tiny", "1", tiny_mlp(path))


@pytest.fixture
async def registered(
    redis_client: Any, names: Names, fleet_settings: FleetSettings, record: ModelRecord
) -> ModelRecord:
    """ "tiny" registered (versions 1 and 2, default 1) with its topics created (one partition)."""
    registry = ModelRegistry(redis_client, names)
    await registry.register(record)
    await registry.register(replace(record, version="2"))
    await ensure_model_topics(fleet_settings.kafka, names, record.name, partitions=1)
    # The test-side worker announces itself as workers do, so the gateway sees "tiny" served (serviceability).
    await Heartbeat(redis_client, names, STAND_IN, [record.name], 3600.0, list, lambda: "cpu").beat()
    return record


@pytest.fixture
def gateway_settings(fleet_settings: FleetSettings) -> GatewaySettings:
    # coalesce off: the test-side stand-in (`serve_one`) reads one request per record, although its heartbeat (the
    # workers' own) says it reads batch records; coalescing has its own tests (tests/integration/test_coalescing.py).
    return GatewaySettings(port=0, fleet=fleet_settings, default_timeout_s=5.0, backend_timeout_s=1.0, coalesce="off")


async def wait_ready(session: aiohttp.ClientSession, gw: Gateway, timeout_s: float = 10.0) -> None:
    """Poll readiness until 200 (a condition, not a fixed sleep), each probe on a connection of its own as a
    probe of an orchestrator would: the session's next infer requests open connections that the gateway's HTTP
    front serves (a GET on a connection hands it to aiohttp for good)."""
    async with asyncio.timeout(timeout_s):
        while True:
            async with session.get(gw.url + "/v2/health/ready", headers={"Connection": "close"}) as resp:
                if resp.status == 200:
                    return
            await asyncio.sleep(0.02)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def gateway(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> AsyncIterator[Gateway]:
    """A started, ready gateway serving the registered model."""
    async with Gateway(gateway_settings, names=names) as gw:
        await wait_ready(http, gw)
        yield gw


@pytest.fixture
async def requests_topic(fleet_settings: FleetSettings, names: Names, registered: ModelRecord) -> AsyncIterator[Any]:
    """A consumer of the model's request topic, reading from the start (what a worker would fetch)."""
    consumer = AIOKafkaConsumer(
        names.request_topic(registered.name),
        bootstrap_servers=fleet_settings.kafka.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    yield consumer
    await consumer.stop()


def mlp_response(request: InferenceRequest) -> InferenceResponse:
    """A plausible answer: y = first 4 columns of x (shape [-1, 4])."""
    x = request.inputs[0].to_numpy()
    y = np.ascontiguousarray(x[:, :4], dtype=np.float32)
    return InferenceResponse(
        request.id, request.model, request.version, outputs=(Tensor.from_numpy("y", y),), batch_size=1
    )


async def deliver(redis: Any, names: Names, request: InferenceRequest, response: InferenceResponse) -> bool:
    """Deliver ``response`` as the contract says: SET NX the result key, then XADD field ``r``."""
    payload = response.to_bytes()
    if not await redis.set(names.result_key(response.id), payload, nx=True, ex=RESULT_TTL_S):
        return False
    target = request.reply.target
    await redis.xadd(target, {"r": payload}, maxlen=REPLY_STREAM_MAXLEN, approximate=True)
    await redis.expire(target, REPLY_STREAM_TTL_S)
    return True


async def serve_one(
    consumer: Any,
    redis: Any,
    names: Names,
    build: Callable[[InferenceRequest], InferenceResponse] = mlp_response,
) -> tuple[Any, InferenceRequest]:
    """Fetch one request record, answer it with ``build``; returns (record, decoded request)."""
    async with asyncio.timeout(10):
        message = await consumer.getone()
    request = InferenceRequest.from_bytes(message.value)
    await deliver(redis, names, request, build(request))
    return message, request
