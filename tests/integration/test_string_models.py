"""String-in/string-out ONNX models through the whole path: text reaches ONNX Runtime as text, a
non-UTF-8 element is that request's 400 INVALID_INPUT, and ``fleet models verify`` compares answers."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleet.client import FleetClient
from fleet.client.errors import FleetHTTPError
from fleet.models.artifacts import build_record
from fleet.models.verify import verify
from gateway import Gateway, GatewaySettings
from schemas import (
    BatchingConfig,
    FleetSettings,
    KafkaSettings,
    ModelRecord,
    ModelRegistry,
    Names,
    RedisSettings,
    Tensor,
    sha256_file,
)
from schemas.topics import ensure_model_topics
from tests.onnxgraphs import string_model, words
from workers import Worker, WorkerSettings

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Stack:
    """The module's gateway, the ``words`` record and the worker serving it."""

    gateway: Gateway
    record: ModelRecord
    worker: Worker


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One gateway and one worker serving the string model ``words`` (version 1, example input "abc") for the
    module: every test only sends requests, so a stack each (a group join each) proves nothing more."""
    names = Names(f"t-strings-{uuid.uuid4().hex[:8]}")
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap, fetch_max_wait_ms=10, session_timeout_ms=2000, heartbeat_interval_ms=500,
        request_timeout_ms=3000, partitions=4,
    )  # fmt: skip
    settings = FleetSettings(namespace=names.namespace, kafka=kafka, redis=RedisSettings(url=redis_url))
    example = (Tensor.from_numpy("s", words(b"abc")),)
    record = build_record(
        "words",
        "1",
        string_model(tmp_path_factory.mktemp("strings") / "words.onnx"),
        batching=BatchingConfig(max_batch_size=8, max_queue_delay_ms=20),
        example=example,
    )
    redis = settings.redis.client()
    try:
        await ModelRegistry(redis, names).register(record)
        await ensure_model_topics(settings.kafka, names, "words")
        async with Gateway(GatewaySettings(fleet=settings, port=0, default_timeout_s=20.0)) as gateway:
            await gateway.wait_ready()
            async with Worker(WorkerSettings(models=("words",), fleet=settings)) as worker:
                await worker.wait_ready(30)
                yield Stack(gateway, record, worker)
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()


@pytest.fixture
def gateway(stack: Stack) -> Gateway:
    return stack.gateway


@pytest.fixture
def words_model(stack: Stack) -> ModelRecord:
    return stack.record


@pytest.fixture
def words_worker(stack: Stack) -> Worker:
    return stack.worker


async def test_json_strings_reach_the_model_as_text(gateway: Gateway, words_worker: Worker) -> None:
    body = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3, 1], "data": ["abc", "x", "é"]}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gateway.url}/v2/models/words/infer", json=body) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
    outputs = {out["name"]: out for out in answer["outputs"]}
    assert outputs["eq"]["datatype"] == "BOOL" and outputs["eq"]["data"] == [True, False, False]
    assert outputs["echo"]["datatype"] == "BYTES" and outputs["echo"]["data"] == ["abc", "x", "é"]


async def test_a_non_utf8_element_is_invalid_input_for_its_request_only(gateway: Gateway, words_worker: Worker) -> None:
    async with FleetClient(gateway.url, timeout_s=20) as client:

        async def ask(*items: bytes) -> Any:
            try:
                return await client.infer("words", {"s": words(*items)})
            except FleetHTTPError as exc:
                return exc

        # Sent together so that they can share a batch: the bad one must not fail the good ones.
        good, bad, other = await asyncio.gather(ask(b"abc"), ask(b"abc", b"\xffabc"), ask(b"x"))
    assert isinstance(bad, FleetHTTPError), bad
    assert bad.status == 400 and bad.code.value == "INVALID_INPUT"
    assert "input 's': element 1 is not UTF-8 text" in bad.message
    assert good.outputs["eq"].tolist() == [[True]] and good.outputs["echo"].tolist() == [[b"abc"]]
    assert other.outputs["eq"].tolist() == [[False]] and other.outputs["echo"].tolist() == [[b"x"]]


async def test_verify_passes_when_the_answer_matches_a_local_onnx_runtime_run(
    gateway: Gateway, words_worker: Worker, words_model: ModelRecord
) -> None:
    async with FleetClient(gateway.url, timeout_s=20) as client:
        report = await verify(client, words_model)
    assert report.ok, report.line()
    assert "matches a local ONNX Runtime run" in report.line()


async def test_verify_fails_when_the_answer_differs_from_the_artifact(
    gateway: Gateway, words_worker: Worker, words_model: ModelRecord, tmp_path: Path
) -> None:
    # The fleet serves the "abc" model; the local artifact of this record answers for "xyz".
    other = string_model(tmp_path / "other.onnx", word="xyz")
    record = dataclasses.replace(words_model, artifact=str(other), sha256=sha256_file(other))
    async with FleetClient(gateway.url, timeout_s=20) as client:
        report = await verify(client, record)
    line = report.line()
    assert not report.ok and line.startswith("FAIL words v1")
    assert "output 'eq' differs from the local run at [0, 0]: True, expected False" in line
