"""FleetClient over gRPC against a real gateway and worker: the same calls give the same results and raise the
same exceptions as over HTTP (the HTTP client is the reference, called in the same test).

One stack for the module: one worker serving two models, a gateway without auth and one with auth.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.client import ClientError, FleetClient, FleetHTTPError
from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import free_port
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import BatchingConfig, ErrorCode, FleetSettings, KafkaSettings, ModelRegistry, Names, RedisSettings
from schemas.apikeys import ApiKeyStore
from schemas.topics import ensure_model_topics
from tests.onnxgraphs import string_model
from workers import Worker, WorkerSettings

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    http: str
    grpc: str  # grpc://host:port
    guarded_http: str
    guarded_grpc: str
    secret: str


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    names = Names(f"t-cgrpc-{uuid.uuid4().hex[:8]}")
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap, fetch_max_wait_ms=10, session_timeout_ms=2000, heartbeat_interval_ms=500
    )
    fleet = FleetSettings(namespace=names.namespace, kafka=kafka, redis=RedisSettings(url=redis_url))
    tmp: Path = tmp_path_factory.mktemp("cgrpc")
    redis = fleet.redis.client()
    registry = ModelRegistry(redis, names)
    tiny = build_record("tiny", "1", tiny_mlp(tmp / "tiny.onnx"), batching=BatchingConfig(16, 2))
    words = build_record("words", "1", string_model(tmp / "words.onnx"), batching=BatchingConfig(8, 2))
    for record in (tiny, words):
        await registry.register(record)
        await ensure_model_topics(kafka, names, record.name)
    _, secret = await ApiKeyStore(redis, names).create("all")
    worker_settings = WorkerSettings(models=("tiny", "words"), fleet=fleet, heartbeat_interval_s=1.0)
    open_settings = GatewaySettings(fleet=fleet, port=0)  # port 0: gRPC on a free port too
    guarded_settings = GatewaySettings(fleet=fleet, port=0, auth=True)
    async with Worker(worker_settings) as worker, Gateway(open_settings) as gw, Gateway(guarded_settings) as guarded:
        await asyncio.gather(worker.wait_ready(30), gw.wait_ready(), guarded.wait_ready())
        assert gw.grpc_target is not None and guarded.grpc_target is not None
        yield Stack(gw.url, f"grpc://{gw.grpc_target}", guarded.url, f"grpc://{guarded.grpc_target}", secret)
    async for key in redis.scan_iter(match=f"{names.namespace}:*", count=1000):
        await redis.delete(key)
    await redis.aclose()


async def _both(url_http: str, url_grpc: str, call: Callable[[FleetClient], Awaitable[Any]], **kw: Any) -> list[Any]:
    """``call`` over HTTP, then over gRPC: each the result or the exception it raised."""
    results: list[Any] = []
    for url in (url_http, url_grpc):
        async with FleetClient(url, timeout_s=20, **kw) as client:
            try:
                results.append(await call(client))
            except Exception as exc:  # the exception is the result compared
                results.append(exc)
    return results


async def test_same_calls_same_answers(stack: Stack) -> None:
    x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
    words = np.array([[b"abc"], ["é x".encode()]], dtype=object)

    async def calls(client: FleetClient) -> dict[str, Any]:
        tiny = await client.infer("tiny", {"x": x}, request_id="r7")
        echoed = await client.infer("words", {"s": words}, outputs=["echo"], version="1")
        return {
            "ready": await client.ready(),
            "server": await client.server_metadata(),
            "metadata": await client.model_metadata("tiny"),
            "metadata v1": await client.model_metadata("words", "1"),
            "model ready": await client.model_ready("tiny"),
            "tiny": (tiny.model, tiny.model_version, tiny.id, tiny["y"].tolist()),
            "words": (echoed.model_version, sorted(echoed.outputs), echoed["echo"].tolist()),
        }

    over_http, over_grpc = await _both(stack.http, stack.grpc, calls)
    assert over_grpc == over_http
    assert over_grpc["ready"] and over_grpc["model ready"] and over_grpc["tiny"][:3] == ("tiny", "1", "r7")
    assert over_grpc["words"] == ("1", ["echo"], [[b"abc"], ["é x".encode()]])
    assert over_grpc["metadata"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]


ROW = {"x": np.zeros((1, 16), np.float32)}


def _failure(exc: Any) -> tuple[type, int, ErrorCode]:
    assert isinstance(exc, FleetHTTPError), exc
    return type(exc), exc.status, exc.code


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        (lambda c: c.infer("nope", ROW), 404, ErrorCode.MODEL_NOT_FOUND),
        (lambda c: c.infer("tiny", ROW, version="9"), 404, ErrorCode.VERSION_NOT_FOUND),
        (lambda c: c.infer("tiny", {"x": np.zeros((1, 15), np.float32)}), 400, ErrorCode.INVALID_INPUT),
        (lambda c: c.model_metadata("nope"), 404, ErrorCode.MODEL_NOT_FOUND),
    ],
    ids=["unknown model", "unknown version", "wrong shape", "metadata of an unknown model"],
)
async def test_errors_raise_the_same_exceptions(
    stack: Stack, call: Callable[[FleetClient], Awaitable[Any]], status: int, code: ErrorCode
) -> None:
    over_http, over_grpc = await _both(stack.http, stack.grpc, call)
    assert _failure(over_grpc) == _failure(over_http) == (FleetHTTPError, status, code)
    assert over_grpc.grpc_status in ("NOT_FOUND", "INVALID_ARGUMENT") and over_http.grpc_status is None


async def test_api_keys(stack: Stack) -> None:
    x = ROW
    refused = await _both(stack.guarded_http, stack.guarded_grpc, lambda c: c.infer("tiny", x), api_key="")
    assert [_failure(e) for e in refused] == [(FleetHTTPError, 401, ErrorCode.UNAUTHENTICATED)] * 2
    assert refused[1].grpc_status == "UNAUTHENTICATED"
    served = await _both(stack.guarded_http, stack.guarded_grpc, lambda c: c.infer("tiny", x), api_key=stack.secret)
    assert [r["y"].shape for r in served] == [(1, 4), (1, 4)]


async def test_unreachable_gateway_and_jobs_are_client_errors(stack: Stack) -> None:
    async with FleetClient(f"grpc://127.0.0.1:{free_port()}", timeout_s=5) as client:
        assert not await client.ready()
        with pytest.raises(ClientError, match="cannot reach the gateway") as raised:
            await client.server_metadata()
        assert not isinstance(raised.value, FleetHTTPError)
    async with FleetClient(stack.grpc.removeprefix("grpc://"), grpc=True) as client:  # host:port and the option
        with pytest.raises(ClientError, match="async jobs are HTTP only"):
            await client.submit("tiny", {"x": np.zeros((1, 16), np.float32)})
        assert (await client.server_metadata())["name"] == "inference-fleet"
