"""The whole sync path: HTTP → gateway → Kafka → worker → Redis → HTTP, with real servers."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import BatchingConfig, FleetSettings, InferenceResponse, ModelRecord, ModelRegistry, Names, TensorSpec
from schemas.envelopes import unpack_responses
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings

from .conftest import wait_worker_ready
from .module_stack import ModuleStack, module_settings, module_stack


@pytest.fixture(scope="module")
async def sync_stack(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ModuleStack]:
    """A gateway and a worker serving ``tiny`` (as the ``tiny_model`` fixture registers it) for the tests that only
    send requests and read their answers; the tests that start, kill or lack workers have stacks of their own."""
    path = tiny_mlp(tmp_path_factory.mktemp("syncpath") / "tiny.onnx")
    record = build_record("tiny", "1", path, batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=5))
    async with module_stack(module_settings(kafka_bootstrap, redis_url, "syncpath"), [record]) as stack:
        yield stack


def _served(stack: ModuleStack) -> tuple[Gateway, ModelRecord]:
    assert stack.gateway is not None
    return stack.gateway, stack.records["tiny"]


def _reference(record: ModelRecord, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(record.artifact, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


async def _infer_json(session: aiohttp.ClientSession, url: str, x: np.ndarray, **extra: Any) -> tuple[int, Any]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    body.update(extra)
    async with session.post(f"{url}/v2/models/tiny/infer", json=body) as response:
        return response.status, await response.json()


async def test_json_infer_matches_onnxruntime(sync_stack: ModuleStack) -> None:
    gateway, tiny_model = _served(sync_stack)
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    async with aiohttp.ClientSession() as session:
        status, body = await _infer_json(session, gateway.url, x, id="my-id")
    assert status == 200, body
    assert body["model_name"] == "tiny" and body["model_version"] == "1" and body["id"] == "my-id"
    (out,) = body["outputs"]
    assert out["name"] == "y" and out["datatype"] == "FP32" and out["shape"] == [3, 4]
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, 4), _reference(tiny_model, x), rtol=1e-5, atol=1e-6)


async def test_binary_infer_matches_onnxruntime(sync_stack: ModuleStack) -> None:
    gateway, tiny_model = _served(sync_stack)
    x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 16], "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.url}/v2/models/tiny/versions/1/infer",
            data=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        payload = await response.read()
        length = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(payload[:length])
    (out,) = meta["outputs"]
    size = out["parameters"]["binary_data_size"]
    y = np.frombuffer(payload[length : length + size], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(y, _reference(tiny_model, x), rtol=1e-5, atol=1e-6)


async def test_requests_are_batched_under_concurrency(sync_stack: ModuleStack) -> None:
    gateway, _ = _served(sync_stack)
    x = np.ones((1, 16), dtype=np.float32)
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(_infer_json(session, gateway.url, x) for _ in range(96)))
    assert all(status == 200 for status, _ in results), results[:3]
    sizes = [body.get("parameters", {}).get("batch_size", 1) for _, body in results]
    assert max(sizes) > 1, sizes


async def test_error_statuses_through_the_whole_path(sync_stack: ModuleStack) -> None:
    gateway, _ = _served(sync_stack)
    async with aiohttp.ClientSession() as session:
        status, body = await _infer_json(session, gateway.url, np.ones((1, 15), dtype=np.float32))
        assert status == 400 and "shape" in body["error"]
        async with session.post(f"{gateway.url}/v2/models/nope/infer", json={"inputs": []}) as response:
            assert response.status == 404 and "nope" in (await response.json())["error"]
        async with session.post(f"{gateway.url}/v2/models/tiny/versions/9/infer", json={"inputs": []}) as response:
            assert response.status == 404
        async with session.post(f"{gateway.url}/v2/models/tiny/infer", data=b"{not json") as response:
            assert response.status == 400 and "error" in await response.json()
        # the worker is still healthy afterwards
        status, body = await _infer_json(session, gateway.url, np.ones((1, 16), dtype=np.float32))
        assert status == 200, body


async def test_no_worker_and_no_autoscaler_is_503_at_once(gateway: Gateway, tiny_model: ModelRecord) -> None:
    async with aiohttp.ClientSession() as session:
        status, body = await _infer_json(
            session, gateway.url, np.ones((1, 16), dtype=np.float32), parameters={"timeout_ms": 60_000}
        )
    assert status == 503 and body["code"] == "MODEL_UNAVAILABLE", body


async def test_timeout_with_workers_scaled_outside_the_fleet_is_504(
    fleet_settings: FleetSettings, tiny_model: ModelRecord
) -> None:
    settings = GatewaySettings(fleet=fleet_settings, port=0, external_scaler=True)
    async with Gateway(settings) as gateway, aiohttp.ClientSession() as session:
        await gateway.wait_ready()
        status, body = await _infer_json(
            session, gateway.url, np.ones((1, 16), dtype=np.float32), parameters={"timeout_ms": 300}
        )
    assert status == 504 and body["code"] == "DEADLINE_EXCEEDED", body


def _failing_model(path: Path) -> Path:
    """x[-1,4] -> Reshape to [2,2]: fine for one row, raises inside ONNX Runtime for more."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "fails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [numpy_helper.from_array(np.array([2, 2], dtype=np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


async def test_model_exception_becomes_error_reply_and_worker_carries_on(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, gateway: Gateway, tmp_path: Path
) -> None:
    from fleet.models.artifacts import build_record

    record = build_record(
        "fails",
        "1",
        _failing_model(tmp_path / "fails.onnx"),
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP32", (2, 2)),),
        batching=BatchingConfig(max_batch_size=1),
    )
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, "fails")
    async with Worker(WorkerSettings(models=("fails",), fleet=fleet_settings)) as w, aiohttp.ClientSession() as s:
        await w.wait_ready(30)
        url = f"{gateway.url}/v2/models/fails/infer"
        bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": [0.0] * 12}]}
        async with s.post(url, json=bad) as response:
            assert response.status == 500
            assert "error" in await response.json()
        good = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
        async with s.post(url, json=good) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]


async def _reply_ids(redis: Any, names: Names, gateway: Gateway) -> Counter[str]:
    entries = await redis.xrange(names.reply_stream(gateway.settings.gateway_id))
    ids: Counter[str] = Counter()
    for _, fields in entries:  # one reply per entry (field r), or a round's replies in one list (field rb)
        listed = unpack_responses(fields[b"rb"])[0] if b"rb" in fields else [InferenceResponse.from_bytes(fields[b"r"])]
        ids.update(response.id for response in listed)
    return ids


async def _load(url: str, count: int, concurrency: int) -> list[tuple[int, Any, np.ndarray]]:
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(count)]
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(x: np.ndarray) -> tuple[int, Any, np.ndarray]:
            async with semaphore:
                status, body = await _infer_json(session, url, x)
                return status, body, x

        return await asyncio.gather(*(one(x) for x in inputs))


async def _wait_for_replies(redis: Any, names: Names, gateway: Gateway, count: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(await _reply_ids(redis, names, gateway)) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} replies after {timeout_s}s")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_worker_loss_loses_no_request(
    sig: int,
    gateway: Gateway,
    tiny_model: ModelRecord,
    worker_factory: Any,
    redis_client: Any,
    names: Names,
) -> None:
    """A worker killed (at-least-once redelivery) or drained mid-stream: every caller gets exactly one answer."""
    first = worker_factory()
    await wait_worker_ready(redis_client, names, first)
    load = asyncio.create_task(_load(gateway.url, count=400, concurrency=16))
    await _wait_for_replies(redis_client, names, gateway, 60)
    first.signal(sig)
    if sig == signal.SIGTERM:
        assert await asyncio.to_thread(first.wait, 30) == 0, first.log()
    second = worker_factory()
    await wait_worker_ready(redis_client, names, second)
    results = await asyncio.wait_for(load, 60)

    assert [status for status, _, _ in results].count(200) == 400, [b for s, b, _ in results if s != 200][:3]
    for _, body, x in results:
        y = np.array(body["outputs"][0]["data"], dtype=np.float32).reshape(1, 4)
        np.testing.assert_allclose(y, _reference(tiny_model, x), rtol=1e-5, atol=1e-6)
    counts = await _reply_ids(redis_client, names, gateway)
    assert len(counts) == 400, counts.most_common(3)
    if sig == signal.SIGTERM:  # a drain commits what it answered: nothing runs twice
        assert set(counts.values()) == {1}, counts.most_common(3)
    # After a SIGKILL the requests answered but not committed run again and reach the reply stream a second
    # time; the gateway gave each caller the first reply only (one 200 each, above). No result is stored.
    assert [k async for k in redis_client.scan_iter(match=f"{names.namespace}:*:result:*")] == []


async def test_cuda_requested_on_cpu_machine_falls_back(
    gateway: Gateway, tiny_model: ModelRecord, worker_factory: Any, redis_client: Any, names: Names
) -> None:
    worker = worker_factory(FLEET_WORKER_DEVICE="cuda")
    await wait_worker_ready(redis_client, names, worker)
    async with aiohttp.ClientSession() as session:
        status, body = await _infer_json(session, gateway.url, np.ones((1, 16), dtype=np.float32))
    assert status == 200, body
    deadline = time.monotonic() + 10
    device = None
    while time.monotonic() < deadline:
        device = await redis_client.hget(names.worker_key(worker.worker_id), "device")
        if device == b"cpu":
            break
        await asyncio.sleep(0.1)
    assert device == b"cpu"
    assert "falling back to CPU" in worker.log()
