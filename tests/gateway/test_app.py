"""The gateway in process against the session's real broker and Redis; the test plays the worker."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from gateway import Gateway, GatewaySettings
from schemas import (
    ErrorCode,
    FleetSettings,
    InferenceRequest,
    InferenceResponse,
    ModelRecord,
    ModelRegistry,
    Names,
    SettingsError,
    Tensor,
    TensorSpec,
)
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID

from .conftest import deliver, mlp_response, serve_one, wait_ready

INFER = "/v2/models/tiny/infer"


def x_input(rows: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": [rows, 16], "data": [0.5] * (16 * rows), **extra}


def binary_body(array: np.ndarray[Any, Any], **header: Any) -> tuple[bytes, dict[str, str]]:
    raw = array.astype("<f4").tobytes()
    doc = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(array.shape), "parameters": {"binary_data_size": len(raw)}}
        ],
        **header,
    }
    head = json.dumps(doc).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


# server and model metadata -------------------------------------------------------------------------------


async def test_server_metadata_live_ready(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + "/v2") as resp:
        meta = await resp.json()
    assert resp.status == 200
    assert meta["name"] == "inference-fleet" and "binary_tensor_data" in meta["extensions"] and meta["version"]
    for path in ("/v2/health/live", "/v2/health/ready"):
        async with http.get(gateway.url + path, headers={"X-Request-Id": "trace-1"}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Request-Id"] == "trace-1"


@pytest.mark.parametrize("path", ["/v2/models/tiny", "/v2/models/tiny/versions/2"])
async def test_model_metadata(gateway: Gateway, http: aiohttp.ClientSession, path: str) -> None:
    async with http.get(gateway.url + path) as resp:
        meta = await resp.json()
    assert resp.status == 200
    assert meta["name"] == "tiny" and meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == (["1", "2"] if path.endswith("tiny") else ["2"])
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    async with http.get(gateway.url + path + "/ready") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "/v2/models/nope", "unknown model 'nope'"),
        ("GET", "/v2/models/nope/ready", "unknown model 'nope'"),
        ("GET", "/v2/models/tiny/versions/9", "no version '9'"),
        ("GET", "/v2/models/tiny/versions/9/ready", "no version '9'"),
        ("POST", "/v2/models/nope/infer", "unknown model"),
        ("POST", "/v2/models/tiny/versions/9/infer", "no version '9'"),
        ("POST", "/v2/models/bad:name/infer", "unknown model"),
        ("GET", "/v2/nothing/here", "not found"),
    ],
)
async def test_unknown_model_version_or_route_is_404(
    gateway: Gateway, http: aiohttp.ClientSession, method: str, path: str, message: str
) -> None:
    async with http.request(method, gateway.url + path, json={"inputs": [x_input()]}) as resp:
        body = await resp.json()
    assert resp.status == 404
    assert message in body["error"]


# request validation ------------------------------------------------------------------------------------

_BAD_BINARY = {"Inference-Header-Content-Length": "9999"}


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        ({"inputs": [x_input(shape=[1, 8], data=[0.0] * 8)]}, None, "has shape [1, 8]"),
        ({"inputs": [x_input(datatype="FP64")]}, None, "datatype FP64"),
        ({"inputs": [x_input(name="z")]}, None, "unexpected input 'z'"),
        ({"inputs": [x_input(), x_input()]}, None, "given twice"),
        ({"inputs": []}, None, "non-empty list"),
        ({"inputs": [x_input(data=[0.0] * 15)]}, None, "holds 15 values"),
        ({"inputs": [x_input(data=["a"] * 16)]}, None, "must be numbers"),
        ({"inputs": [x_input()], "outputs": [{"name": "nope"}]}, None, "unknown output 'nope'"),
        ({"inputs": [x_input()], "parameters": {"timeout_ms": -5}}, None, "positive"),
        ({"inputs": [x_input()]}, {"X-Fleet-Timeout-Ms": "soon"}, "not a number"),
        (b"{not json", None, "not valid JSON"),
        (b"", None, "empty body"),
        ({"inputs": [x_input()]}, _BAD_BINARY, "past the end"),
    ],
)
async def test_bad_requests_are_400(
    gateway: Gateway, http: aiohttp.ClientSession, body: Any, headers: dict[str, str] | None, message: str
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(gateway.url + INFER, data=data, headers=headers) as resp:
        answer = await resp.json()
    assert resp.status == 400, answer
    assert message in answer["error"]


async def test_missing_input_is_400(gateway: Gateway, http: aiohttp.ClientSession, redis_client: Any) -> None:
    registry = ModelRegistry(redis_client, gateway.names)
    record = await registry.get("tiny")
    # a two-input model: giving only one of them is "missing"
    await registry.register(replace(record, name="two", inputs=(*record.inputs, TensorSpec("w", "FP32", (-1, 2)))))
    async with http.post(gateway.url + "/v2/models/two/infer", json={"inputs": [x_input()]}) as resp:
        answer = await resp.json()
    assert resp.status == 400 and "missing input(s) ['w']" in answer["error"]


async def test_oversized_body_is_413(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> None:
    async with Gateway(replace(gateway_settings, max_body_bytes=2048), names=names) as gw:
        await wait_ready(http, gw)
        async with http.post(gw.url + INFER, json={"inputs": [x_input(rows=64)]}) as resp:
            answer = await resp.json()
        assert resp.status == 413 and "limit of 2048 bytes" in answer["error"]


async def test_request_over_the_limit_once_queued_is_413_naming_the_body_limit(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> None:
    # One documented limit: JSON zeros (2 bytes per element) under the body limit that become FP32 tensors
    # (4 bytes per element) over it get the same 413 naming the same setting, never a Kafka record message.
    tensor = {"name": "x", "datatype": "FP32", "shape": [64, 16], "data": [0] * 1024}
    body = json.dumps({"inputs": [tensor]}, separators=(",", ":"))
    assert 2048 < len(body) < 3000
    async with Gateway(replace(gateway_settings, max_body_bytes=3000), names=names) as gw:
        await wait_ready(http, gw)
        async with http.post(gw.url + INFER, data=body, headers={"Content-Type": "application/json"}) as resp:
            answer = await resp.json()
        assert resp.status == 413 and answer["code"] == "PAYLOAD_TOO_LARGE"
        assert "as queued" in answer["error"]
        assert "limit of 3000 bytes (FLEET_GATEWAY_MAX_BODY_BYTES)" in answer["error"]
        assert "Kafka" not in answer["error"]


def test_body_limit_above_the_kafka_record_limit_is_refused_at_startup(gateway_settings: GatewaySettings) -> None:
    with pytest.raises(SettingsError, match="FLEET_KAFKA_MAX_REQUEST_BYTES"):
        replace(gateway_settings, max_body_bytes=gateway_settings.fleet.kafka.max_request_bytes + 1)


# timeouts and unreachable backends -------------------------------------------------------------------------


async def test_no_worker_is_504_after_the_timeout(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    async with http.post(gateway.url + INFER, json={"inputs": [x_input()], "parameters": {"timeout_ms": 200}}) as resp:
        answer = await resp.json()
    assert resp.status == 504 and "200 ms" in answer["error"]
    assert 0.2 <= time.monotonic() - started < 2.0
    async with http.post(gateway.url + INFER, json={"inputs": [x_input()]}, headers={"X-Fleet-Timeout-Ms": "100"}) as r:
        assert r.status == 504


# the full reply path -----------------------------------------------------------------------------------


async def test_json_round_trip(
    gateway: Gateway, http: aiohttp.ClientSession, requests_topic: Any, redis_client: Any, names: Names
) -> None:
    body = {"id": "client-7", "inputs": [x_input(rows=2)], "parameters": {"priority": 3}}
    call = asyncio.create_task(http.post(gateway.url + INFER, json=body, headers={"X-Fleet-Timeout-Ms": "4000"}))
    message, request = await serve_one(requests_topic, redis_client, names)
    async with await call as resp:
        answer = await resp.json()
    assert resp.status == 200, answer
    # the record follows the contract
    headers = dict(message.headers)
    assert message.key == request.id.encode() and headers[HEADER_REQUEST_ID] == message.key
    assert headers[HEADER_ENVELOPE_VERSION] == b"1"
    assert request.id != "client-7"  # the wire id is the gateway's own
    assert (request.model, request.version) == ("tiny", "1")
    assert request.reply.target == names.reply_stream(gateway.settings.gateway_id)
    assert request.parameters == {"priority": 3}
    assert request.deadline_ms is not None and 3000 < request.deadline_ms - request.created_ms <= 4000
    # the answer
    assert answer["id"] == "client-7" and answer["model_name"] == "tiny" and answer["model_version"] == "1"
    assert answer["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 4], "data": [0.5] * 8}]
    assert resp.headers["X-Request-Id"] == request.id


@pytest.mark.parametrize(
    ("headers", "parameters"), [({"X-Fleet-Lane": "bulk"}, {}), ({}, {"lane": "bulk"})], ids=["header", "parameter"]
)
async def test_bulk_lane_goes_to_the_bulk_topic(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    redis_client: Any,
    names: Names,
    fleet_settings: FleetSettings,
    headers: dict[str, str],
    parameters: dict[str, Any],
) -> None:
    consumer = AIOKafkaConsumer(
        names.bulk_topic("tiny"), bootstrap_servers=fleet_settings.kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        body = {"inputs": [x_input()], "parameters": parameters}
        call = asyncio.create_task(http.post(gateway.url + INFER, json=body, headers=headers))
        _, request = await serve_one(consumer, redis_client, names)
        async with await call as resp:
            assert resp.status == 200, await resp.text()
    finally:
        await consumer.stop()
    assert request.parameters == {}
    async with http.post(gateway.url + INFER, json={"inputs": [x_input()]}, headers={"X-Fleet-Lane": "x"}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == "INVALID_REQUEST"


async def test_binary_round_trip(
    gateway: Gateway, http: aiohttp.ClientSession, requests_topic: Any, redis_client: Any, names: Names
) -> None:
    x = np.arange(48, dtype=np.float32).reshape(3, 16)
    data, headers = binary_body(x, parameters={"binary_data_output": True})
    call = asyncio.create_task(http.post(gateway.url + "/v2/models/tiny/versions/2/infer", data=data, headers=headers))
    _, request = await serve_one(requests_topic, redis_client, names)
    assert request.version == "2"
    np.testing.assert_array_equal(request.inputs[0].to_numpy(), x)
    async with await call as resp:
        raw = await resp.read()
    assert resp.status == 200, raw
    length = int(resp.headers["Inference-Header-Content-Length"])
    header = json.loads(raw[:length])
    (out,) = header["outputs"]
    assert out["parameters"]["binary_data_size"] == 3 * 4 * 4 and "data" not in out
    y = np.frombuffer(raw[length:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_array_equal(y, x[:, :4])
    assert header["id"] == request.id  # no client id: the wire id


@pytest.mark.parametrize(
    ("code", "status"),
    [(ErrorCode.MODEL_ERROR, 500), (ErrorCode.INVALID_INPUT, 400), (ErrorCode.MODEL_LOAD_FAILED, 503)],
)
async def test_worker_error_reply_maps_to_status(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    requests_topic: Any,
    redis_client: Any,
    names: Names,
    code: ErrorCode,
    status: int,
) -> None:
    def fail(request: InferenceRequest) -> InferenceResponse:
        return InferenceResponse.failure(request, code, "Gemm exploded", worker="w1")

    call = asyncio.create_task(http.post(gateway.url + INFER, json={"inputs": [x_input()]}))
    await serve_one(requests_topic, redis_client, names, fail)
    async with await call as resp:
        assert resp.status == status
        assert await resp.json() == {"error": "Gemm exploded", "code": code.value}


async def test_duplicate_reply_is_ignored(
    gateway: Gateway, http: aiohttp.ClientSession, requests_topic: Any, redis_client: Any, names: Names
) -> None:
    call = asyncio.create_task(http.post(gateway.url + INFER, json={"inputs": [x_input()]}))
    _, request = await serve_one(requests_topic, redis_client, names)
    async with await call as resp:
        first = await resp.json()
    # A second entry for the same id (as a redelivery bypassing the NX marker would write) is dropped.
    other = replace(mlp_response(request), outputs=(Tensor.from_numpy("y", np.zeros((1, 4), np.float32)),))
    await redis_client.xadd(request.reply.target, {"r": other.to_bytes()})
    await redis_client.xadd(request.reply.target, {"r": b"garbage"})
    assert not await deliver(redis_client, names, request, other)  # the NX marker refuses it too
    # ...and the listener keeps serving.
    call = asyncio.create_task(http.post(gateway.url + INFER, json={"inputs": [x_input()]}))
    await serve_one(requests_topic, redis_client, names)
    async with await call as resp:
        assert resp.status == 200
        assert (await resp.json())["outputs"] == first["outputs"]


async def test_clients_reusing_an_id_do_not_collide(
    gateway: Gateway, http: aiohttp.ClientSession, requests_topic: Any, redis_client: Any, names: Names
) -> None:
    def echo_rows(request: InferenceRequest) -> InferenceResponse:
        return mlp_response(request)

    calls = [
        asyncio.create_task(http.post(gateway.url + INFER, json={"id": "same", "inputs": [x_input(rows=n)]}))
        for n in (1, 2)
    ]
    ids = {(await serve_one(requests_topic, redis_client, names, echo_rows))[1].id for _ in calls}
    assert len(ids) == 2
    shapes = []
    for call in calls:
        async with await call as resp:
            answer = await resp.json()
        assert answer["id"] == "same"
        shapes.append(answer["outputs"][0]["shape"])
    assert shapes == [[1, 4], [2, 4]]


async def test_metrics_count_success_and_failure(
    gateway: Gateway, http: aiohttp.ClientSession, requests_topic: Any, redis_client: Any, names: Names
) -> None:
    call = asyncio.create_task(http.post(gateway.url + INFER, json={"inputs": [x_input()]}))
    await serve_one(requests_topic, redis_client, names)
    async with await call as resp:
        assert resp.status == 200
    async with http.post(gateway.url + INFER, json={"inputs": [x_input(name="z")]}) as resp:
        assert resp.status == 400
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert 'fleet_gateway_request_success_total{model="tiny",version="1"} 1.0' in text
    assert 'fleet_gateway_request_failure_total{code="INVALID_INPUT",model="tiny",version="1"} 1.0' in text
    assert 'fleet_gateway_request_duration_seconds_count{model="tiny",version="1"} 2.0' in text
    assert "fleet_gateway_requests_in_flight 0.0" in text


async def test_stop_waits_for_in_flight_requests(
    gateway_settings: GatewaySettings,
    names: Names,
    registered: ModelRecord,
    http: aiohttp.ClientSession,
    requests_topic: Any,
    redis_client: Any,
) -> None:
    gw = Gateway(gateway_settings, names=names)
    await gw.start()
    await wait_ready(http, gw)
    call = asyncio.create_task(http.post(gw.url + INFER, json={"inputs": [x_input()]}))
    async with asyncio.timeout(10):
        message = await requests_topic.getone()
    stopping = asyncio.create_task(gw.stop())
    await asyncio.sleep(0)  # let stop() begin draining before the reply arrives
    request = InferenceRequest.from_bytes(message.value)
    await deliver(redis_client, names, request, mlp_response(request))
    async with await call as resp:
        assert resp.status == 200
    await stopping
    await gw.stop()  # idempotent
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(gw.url + "/v2/health/live"):
            pass


async def test_stop_answers_requests_still_waiting_after_the_grace_with_503(
    gateway_settings: GatewaySettings,
    names: Names,
    registered: ModelRecord,
    http: aiohttp.ClientSession,
    requests_topic: Any,
) -> None:
    gw = Gateway(replace(gateway_settings, shutdown_grace_s=0.3), names=names)
    await gw.start()
    await wait_ready(http, gw)
    call = asyncio.create_task(http.post(gw.url + INFER, json={"inputs": [x_input()]}))
    async with asyncio.timeout(10):
        await requests_topic.getone()  # published; no worker will ever answer it
    began = asyncio.get_running_loop().time()
    await gw.stop()
    assert asyncio.get_running_loop().time() - began < 5.0
    # An HTTP answer, not a cut connection: the client can retry.
    async with await call as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["code"] == "BACKEND_UNAVAILABLE" and "stopped before the reply" in body["error"]


async def test_gateway_is_single_use(gateway: Gateway) -> None:
    with pytest.raises(RuntimeError, match="cannot be started"):
        await gateway.start()


async def test_requests_beyond_max_in_flight_are_503_overloaded(
    gateway_settings: GatewaySettings,
    names: Names,
    registered: ModelRecord,
    http: aiohttp.ClientSession,
    requests_topic: Any,
) -> None:
    async with Gateway(replace(gateway_settings, max_in_flight=1), names=names) as gw:
        await wait_ready(http, gw)
        slow = {"inputs": [x_input()], "parameters": {"timeout_ms": 500}}
        waiting = asyncio.create_task(http.post(gw.url + INFER, json=slow))
        async with asyncio.timeout(10):
            await requests_topic.getone()  # the first request is published: it is in flight
        async with http.post(gw.url + INFER, json={"inputs": [x_input()]}) as resp:
            answer = await resp.json()
            retry_after = resp.headers.get("Retry-After")
        assert resp.status == 503 and answer["code"] == "OVERLOADED" and retry_after == "1"
        assert "1 requests in flight (FLEET_GATEWAY_MAX_IN_FLIGHT=1)" in answer["error"]
        async with await waiting as resp:
            assert resp.status == 504