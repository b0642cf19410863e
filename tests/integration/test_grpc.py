"""Triton's clients, unmodified, against a real gateway and worker: tritonclient.grpc (sync and asyncio) over the
gateway's OIP v2 gRPC service, and tritonclient.http for the model configuration and statistics extensions.

One stack for the module (two models, one worker, a gateway without auth and one with auth and a small size
limit), so the many calls share its start-up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import BatchingConfig, FleetSettings, KafkaSettings, ModelRecord, ModelRegistry, Names, RedisSettings
from schemas.apikeys import ApiKeyStore
from schemas.stats import WorkerReport
from schemas.topics import ensure_model_topics
from tests.onnxgraphs import string_model
from workers import Worker, WorkerSettings

grpcclient = pytest.importorskip("tritonclient.grpc")
grpcaio = pytest.importorskip("tritonclient.grpc.aio")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402  (after the importorskip)
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    gateway: Gateway
    guarded: Gateway  # auth on, 64 KiB size limit
    tiny: ModelRecord
    words: ModelRecord
    redis: Any
    names: Names
    secret: str  # a key for every model
    words_secret: str  # a key for "words" only


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    names = Names(f"t-grpc-{uuid.uuid4().hex[:8]}")
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap,
        fetch_max_wait_ms=10,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        request_timeout_ms=3000,
        partitions=2,
    )
    fleet = FleetSettings(namespace=names.namespace, kafka=kafka, redis=RedisSettings(url=redis_url))
    tmp: Path = tmp_path_factory.mktemp("grpc")
    redis = fleet.redis.client()
    registry = ModelRegistry(redis, names)
    tiny = build_record(
        "tiny", "1", tiny_mlp(tmp / "tiny.onnx"), batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=5)
    )
    words = build_record("words", "1", string_model(tmp / "words.onnx"), batching=BatchingConfig(8, 5))
    for record in (tiny, words):
        await registry.register(record)
        await ensure_model_topics(kafka, names, record.name)
    keys = ApiKeyStore(redis, names)
    _, secret = await keys.create("all")
    _, words_secret = await keys.create("words-only", models=("words",))
    worker_settings = WorkerSettings(models=("tiny", "words"), fleet=fleet, heartbeat_interval_s=0.2)
    open_settings = GatewaySettings(fleet=fleet, port=0, default_timeout_s=20.0)
    guarded_settings = GatewaySettings(fleet=fleet, port=0, auth=True, max_body_bytes=64 << 10)
    async with Worker(worker_settings) as worker, Gateway(open_settings) as gw, Gateway(guarded_settings) as guarded:
        await asyncio.gather(worker.wait_ready(30), gw.wait_ready(), guarded.wait_ready())
        yield Stack(gw, guarded, tiny, words, redis, names, secret, words_secret)
    async for key in redis.scan_iter(match=f"{names.namespace}:*", count=1000):
        await redis.delete(key)
    await redis.aclose()


def _expected(record: ModelRecord, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(record.artifact, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _tiny_input(x: np.ndarray) -> Any:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def _sync_calls(target: str, x: np.ndarray) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(target)
    try:
        words = np.array([[b"abc"], ["é x".encode()]], dtype=object)
        text = grpcclient.InferInput("s", [2, 1], "BYTES")
        text.set_data_from_numpy(words)
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "server": client.get_server_metadata(as_json=True),
            "model_ready": client.is_model_ready("tiny"),
            "unknown_ready": client.is_model_ready("nope"),
            "metadata": client.get_model_metadata("tiny", as_json=True),
            "index": client.get_model_repository_index(as_json=True),
            "config": client.get_model_config("tiny", as_json=True)["config"],
            "y": client.infer("tiny", [_tiny_input(x)], request_id="r1").as_numpy("y"),
            "words": client.infer("words", [text], outputs=[grpcclient.InferRequestedOutput("echo")]),
        }
    finally:
        client.close()


async def test_tritonclient_grpc_sync_calls(stack: Stack) -> None:
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    got = await asyncio.to_thread(_sync_calls, stack.gateway.grpc_target, x)
    assert got["live"] and got["ready"] and got["model_ready"] and not got["unknown_ready"]
    assert got["server"]["name"] == "inference-fleet" and "binary_tensor_data" in got["server"]["extensions"]
    assert got["metadata"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "16"]}]
    assert got["metadata"]["versions"] == ["1"] and got["metadata"]["platform"] == "onnxruntime_onnx"
    assert {(m["name"], m["version"], m["state"]) for m in got["index"]["models"]} == {
        ("tiny", "1", "READY"),
        ("words", "1", "READY"),
    }
    config = got["config"]
    assert config["max_batch_size"] == 32 and config["dynamic_batching"]["max_queue_delay_microseconds"] == "5000"
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["16"]}]
    np.testing.assert_allclose(got["y"], _expected(stack.tiny, x), rtol=1e-5, atol=1e-6)
    words = got["words"]
    assert words.as_numpy("echo").tolist() == [[b"abc"], ["é x".encode()]]
    assert words.as_numpy("eq") is None  # only the requested output comes back


async def test_typed_contents_and_raw_answers(stack: Stack) -> None:
    """A request with typed ``contents`` (what KServe-style clients send) is answered in raw_output_contents."""
    x = np.arange(32, dtype=np.float32).reshape(2, 16) / 10
    request = service_pb2.ModelInferRequest(model_name="tiny", id="typed")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 16]).contents.fp32_contents.extend(x.ravel().tolist())
    async with grpc.aio.insecure_channel(stack.gateway.grpc_target) as channel:
        answer = await service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
    assert answer.id == "typed" and answer.model_version == "1" and [o.name for o in answer.outputs] == ["y"]
    y = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).reshape(list(answer.outputs[0].shape))
    np.testing.assert_allclose(y, _expected(stack.tiny, x), rtol=1e-5, atol=1e-6)


def _status(call: Any) -> grpc.StatusCode:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return grpc.StatusCode[str(raised.value.status()).removeprefix("StatusCode.")]


def _error_statuses(target: str, guarded: str, secret: str, words_secret: str) -> dict[str, grpc.StatusCode]:
    x = np.zeros((1, 16), dtype=np.float32)
    open_client = grpcclient.InferenceServerClient(target)
    guarded_client = grpcclient.InferenceServerClient(guarded)
    bearer = {"authorization": f"Bearer {secret}"}
    words_only = {"authorization": f"Bearer {words_secret}"}
    bad_key = {"authorization": "Bearer x"}
    wrong = grpcclient.InferInput("x", [1, 15], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 15), dtype=np.float32))
    big = np.zeros((1, 32 << 10), dtype=np.float32)  # 128 KiB over the guarded gateway's 64 KiB
    try:
        return {
            "unknown model": _status(lambda: open_client.infer("nope", [_tiny_input(x)])),
            "unknown version": _status(lambda: open_client.infer("tiny", [_tiny_input(x)], model_version="9")),
            "wrong shape": _status(lambda: open_client.infer("tiny", [wrong])),
            "no key": _status(lambda: guarded_client.infer("tiny", [_tiny_input(x)])),
            "bad key": _status(lambda: guarded_client.get_model_metadata("tiny", headers=bad_key)),
            "not allowed": _status(lambda: guarded_client.infer("tiny", [_tiny_input(x)], headers=words_only)),
            "too large": _status(lambda: guarded_client.infer("tiny", [_tiny_input(big)], headers=bearer)),
            "ok with key": guarded_client.infer("tiny", [_tiny_input(x)], headers=bearer).as_numpy("y").shape,
            "open without key": guarded_client.is_server_live(),
        }
    finally:
        open_client.close()
        guarded_client.close()


async def test_errors_and_auth_map_to_status_codes(stack: Stack) -> None:
    assert stack.guarded.grpc_target is not None and stack.gateway.grpc_target is not None
    got = await asyncio.to_thread(
        _error_statuses, stack.gateway.grpc_target, stack.guarded.grpc_target, stack.secret, stack.words_secret
    )
    assert got == {
        "unknown model": grpc.StatusCode.NOT_FOUND,
        "unknown version": grpc.StatusCode.NOT_FOUND,
        "wrong shape": grpc.StatusCode.INVALID_ARGUMENT,
        "no key": grpc.StatusCode.UNAUTHENTICATED,
        "bad key": grpc.StatusCode.UNAUTHENTICATED,
        "not allowed": grpc.StatusCode.PERMISSION_DENIED,
        "too large": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ok with key": (1, 4),
        "open without key": True,
    }


async def test_unserved_model_is_unavailable_and_error_code_travels(stack: Stack) -> None:
    record = build_record("idle", "1", stack.tiny.artifact)
    await ModelRegistry(stack.redis, stack.names).register(record)
    request = service_pb2.ModelInferRequest(model_name="idle")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.zeros(16, dtype=np.float32).tobytes())
    async with grpc.aio.insecure_channel(stack.gateway.grpc_target) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("fleet-error-code", "MODEL_UNAVAILABLE") in tuple(raised.value.trailing_metadata() or ())


async def test_aio_stream_many_in_flight(stack: Stack) -> None:
    """50 requests on one stream, sent before any answer is read: each answered once, with its own result."""
    rng = np.random.default_rng(7)
    xs = {f"s{i}": rng.standard_normal((1, 16)).astype(np.float32) for i in range(50)}
    xs["bad"] = np.zeros((1, 15), dtype=np.float32)

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for request_id, x in xs.items():
            tensor = grpcaio.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            yield {"model_name": "tiny", "inputs": [tensor], "request_id": request_id}

    client = grpcaio.InferenceServerClient(stack.gateway.grpc_target)
    results: dict[str, np.ndarray] = {}
    errors: list[str] = []
    try:
        assert await client.is_server_ready()
        async for result, error in client.stream_infer(requests(), stream_timeout=30):
            if error is not None:
                errors.append(str(error))
            else:
                results[result.get_response().id] = result.as_numpy("y")
            if len(results) + len(errors) == len(xs):
                break
    finally:
        await client.close()
    assert len(errors) == 1 and "input 'x'" in errors[0]
    assert set(results) == set(xs) - {"bad"}
    batch = np.concatenate([xs[k] for k in sorted(results)])
    np.testing.assert_allclose(np.concatenate([results[k] for k in sorted(results)]), _expected(stack.tiny, batch))


async def test_health_checking(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.gateway.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def _reports(stack: Stack, model: str) -> list[WorkerReport]:
    ids = [m.decode() for m in await stack.redis.zrange(stack.names.stats_index_key(model), 0, -1)]
    hashes = [await stack.redis.hgetall(stack.names.stats_key(model, i)) for i in ids]
    return [r for r in (WorkerReport.from_hash(i, h) for i, h in zip(ids, hashes, strict=True)) if r is not None]


def _http_stats(url: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        return (
            client.get_model_config("tiny"),
            client.get_inference_statistics("words"),
            client.get_inference_statistics(),
        )
    finally:
        client.close()


async def test_http_config_and_statistics_match_registry_and_workers(stack: Stack) -> None:
    """Three requests for ``words``: the statistics grow by exactly what the worker counted."""
    before = sum(r.succeeded for r in await _reports(stack, "words"))
    client = grpcaio.InferenceServerClient(stack.gateway.grpc_target)
    try:
        for _ in range(3):
            text = grpcaio.InferInput("s", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[b"abc"]], dtype=object))
            await client.infer("words", [text])
    finally:
        await client.close()
    for _ in range(200):  # the worker reports every 0.2 s
        reports = await _reports(stack, "words")
        if sum(r.succeeded for r in reports) >= before + 3:
            break
        await asyncio.sleep(0.05)
    config, words, every = await asyncio.to_thread(_http_stats, stack.gateway.url)
    assert config["name"] == "tiny" and config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 32
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [16]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 5000}
    assert config["instance_group"][0]["count"] == 1
    [stats] = words["model_stats"]
    counted = sum(r.succeeded for r in reports)
    assert counted == before + 3 and stats["inference_count"] >= counted
    assert stats["inference_stats"]["success"]["count"] == stats["inference_count"]
    assert 1 <= stats["execution_count"] <= stats["inference_count"]
    assert stats["inference_stats"]["compute_infer"]["ns"] > 0 and stats["last_inference"] > 0
    assert {s["name"] for s in every["model_stats"]} >= {"tiny", "words"}
