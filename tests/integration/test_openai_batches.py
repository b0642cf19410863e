"""The OpenAI Files and Batch API through the whole path with the official ``openai`` SDK, unmodified: upload, create,
poll, download the output and error files (greedy answers equal ``generate()`` in-process), embeddings, a batch that
fails validation, cancel (lines not started are never sent), a gateway SIGKILLed mid-batch (another one resumes it:
every custom_id answered exactly once), and a worker killed mid-stream (the stream ends with an error event).

One stack for the module: a gateway that serves the routes but drives no batch, one in-process worker serving a tiny
Llama (``gen``) and a feature-extraction model (``fe``); each test starts the batch-driving gateways it needs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from fleet.local.servers import LocalBroker
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from gateway.errors import BackendDownError, OverloadedError
from gateway.publisher import RequestPublisher
from schemas import FleetSettings, Lane, ModelRegistry, Names
from schemas.apikeys import ApiKeyStore
from schemas.topics import ensure_model_topics
from tests import genmodels, textmodels
from tests.integration.conftest import WorkerProcess, service_env, wait_worker_ready
from tests.integration.test_any_models import _settings
from workers import Worker, WorkerSettings

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")
pytestmark = pytest.mark.integration

FINAL = {"completed", "failed", "cancelled", "expired"}


@dataclass
class Stack:
    url: str
    settings: FleetSettings
    gateway: GatewaySettings  # the driving gateways' settings
    llama: tuple[Any, Any]
    names: Names
    redis: Any
    directory: Path


@pytest.fixture(scope="module")
def batch_broker() -> Iterator[str]:
    """A broker of this module's own: batches create bulk topics on first use, and the session's embedded broker,
    holding the topics of every earlier test, can take longer to create one than a publish may wait."""
    broker = LocalBroker()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="module")
async def stack(batch_broker: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    kafka_bootstrap = batch_broker
    names = Names(f"t-obatch-{uuid.uuid4().hex[:8]}")
    settings = _settings(kafka_bootstrap, redis_url, names)
    directory = tmp_path_factory.mktemp("obatch")

    def build() -> tuple[Any, ...]:
        path, model, tok = genmodels.llama(directory / "llama")
        fe_path, _, _ = textmodels.bert(directory / "fe", "feature-extraction")
        records = (
            build_record("gen", "1", path, load=False),
            build_record("fe", "1", fe_path, load=False),
            build_record("idle", "1", path, load=False),  # no worker serves it
            build_record("gen2", "1", path, load=False),  # served by a worker subprocess (killed mid-stream)
        )
        return records, (model, tok)

    records, llama = await asyncio.to_thread(build)
    redis = settings.redis.client()
    registry = ModelRegistry(redis, names)
    for record in records:
        await registry.register(record)
        await ensure_model_topics(settings.kafka, names, record.name)
    routes_only = GatewaySettings(
        fleet=settings, port=0, grpc_port=0, batches=False, files_dir=str(directory / "files"),
        stream_idle_timeout_s=2.0,
    )  # fmt: skip
    driving = replace(
        routes_only, batches=True, batch_poll_s=0.2, batch_lease_s=1.0, batch_checkpoint_s=0.2, batch_window=4,
        batch_cancel_grace_s=0.5,
    )  # fmt: skip
    worker_settings = WorkerSettings(
        models=("gen", "fe"), fleet=settings, cache_dir=str(directory / "cache"), max_sequences=8
    )
    try:
        async with Gateway(routes_only) as gateway:
            await gateway.wait_ready()
            async with Worker(worker_settings) as worker:
                await worker.wait_ready(90)
                yield Stack(gateway.url, settings, driving, llama, names, redis, directory)
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()


@pytest.fixture
def driver(stack: Stack) -> Callable[[], AbstractAsyncContextManager[Gateway]]:
    """A gateway that drives batches (the module's gateway only serves the routes)."""

    @asynccontextmanager
    async def start() -> AsyncIterator[Gateway]:
        async with Gateway(stack.gateway) as gateway:
            await gateway.wait_ready()
            yield gateway

    return start


def _client(stack: Stack) -> Any:
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=30)


def _chat_line(custom_id: str, prompt: str, max_tokens: int = 6, model: str = "gen") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}  # fmt: skip
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


async def _upload(client: Any, stack: Stack, lines: list[dict[str, Any]], name: str) -> Any:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return await client.files.create(file=(f"{name}.jsonl", data), purpose="batch")


async def _wait(client: Any, batch_id: str, statuses: set[str], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        await asyncio.sleep(0.1)


async def _lines(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines() if line.strip()]


def _expected(stack: Stack, prompt: str, max_tokens: int) -> str:
    model, tok = stack.llama
    text = f"user: {prompt}\nassistant:"  # the fallback chat template (the tokenizer has none)
    return str(tok.decode(genmodels.greedy(model, tok, text, max_tokens), skip_special_tokens=True))


async def test_batch_flow_with_the_openai_sdk(stack: Stack, driver: Any) -> None:
    client = _client(stack)
    lines = [_chat_line(f"req-{i}", genmodels.PROMPTS[i % 4]) for i in range(10)]
    lines.insert(3, {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"model": "gen", "max_tokens": 4}})  # fmt: skip
    lines.append(_chat_line("unknown-model", "hello", model="nope"))
    uploaded = await _upload(client, stack, lines, "chat")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    assert (await client.files.retrieve(uploaded.id)).id == uploaded.id
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"k": "v"}
    )
    assert batch.status == "validating" and batch.metadata == {"k": "v"}
    async with driver():
        done = await _wait(client, batch.id, FINAL)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (12, 10, 2)
    assert done.completed_at and done.in_progress_at and done.finalizing_at
    output = await _lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"req-{i}" for i in range(10))
    for line in output:
        index = int(line["custom_id"].split("-")[1])
        assert line["response"]["status_code"] == 200 and line["error"] is None
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 6
        assert body["choices"][0]["message"]["content"] == _expected(stack, genmodels.PROMPTS[index % 4], 6)
    errors = {e["custom_id"]: e for e in await _lines(client, done.error_file_id)}
    assert set(errors) == {"no-messages", "unknown-model"}
    assert errors["no-messages"]["response"]["status_code"] == 400
    assert "messages" in errors["no-messages"]["response"]["body"]["error"]["message"]
    assert errors["unknown-model"]["response"]["status_code"] == 404
    listed = await client.batches.list(limit=10)
    assert batch.id in {b.id for b in listed.data}
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_nope")
    await client.close()


async def test_embeddings_batch_and_a_batch_that_fails_validation(stack: Stack, driver: Any) -> None:
    client = _client(stack)
    texts = ["hello world", "the fleet serves models"]
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fe", "input": t}}
             for i, t in enumerate(texts)]  # fmt: skip
    embeddings = await client.batches.create(
        input_file_id=(await _upload(client, stack, lines, "emb")).id, endpoint="/v1/embeddings",
        completion_window="24h",
    )  # fmt: skip
    bad = [_chat_line("a", "x"), _chat_line("a", "y"), {**_chat_line("b", "z"), "url": "/v1/embeddings"}]
    invalid = await client.batches.create(
        input_file_id=(await _upload(client, stack, bad, "bad")).id, endpoint="/v1/chat/completions",
        completion_window="24h",
    )  # fmt: skip
    with pytest.raises(openai.BadRequestError):
        await client.batches.create(input_file_id="file-nope", endpoint="/v1/moderations", completion_window="24h")
    async with driver():
        done = await _wait(client, embeddings.id, FINAL)
        failed = await _wait(client, invalid.id, FINAL)
    assert done.status == "completed" and done.error_file_id is None
    sync = await client.embeddings.create(model="fe", input=texts)
    by_id = {line["custom_id"]: line["response"]["body"]["data"][0]["embedding"] for line in
             await _lines(client, done.output_file_id)}  # fmt: skip
    for i, item in enumerate(sync.data):
        assert by_id[f"e{i}"] == pytest.approx(item.embedding, rel=1e-5, abs=1e-6)
    assert failed.status == "failed" and failed.errors is not None and failed.failed_at
    assert {(e.code, e.line) for e in failed.errors.data} == {("duplicate_custom_id", 2), ("mismatched_endpoint", 3)}
    await client.close()


async def test_a_line_whose_publish_fails_for_now_is_sent_again(
    stack: Stack, driver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line whose publish fails because the broker or Redis is briefly unavailable (BACKEND_UNAVAILABLE) or the
    gateway is busy (OVERLOADED) is sent again after a pause and answered, not written to the error file."""
    topic = stack.names.request_topic("fe", Lane.BULK)
    outage = BackendDownError("kafka", "a passing outage")
    faults = [outage, OverloadedError("a passing peak"), outage]
    calls: list[str] = []
    publish = RequestPublisher.publish

    async def failing_first(self: RequestPublisher, to: str, request: Any, **kw: Any) -> None:
        """The real publish, after the first publishes to the embeddings' bulk topic failed (the fault under test)."""
        if to == topic:
            calls.append(request.id)
            if len(calls) <= len(faults):
                raise faults[len(calls) - 1]
        await publish(self, to, request, **kw)

    monkeypatch.setattr(RequestPublisher, "publish", failing_first)
    client = _client(stack)
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fe", "input": t}}
             for i, t in enumerate(["hello world", "the fleet serves models"])]  # fmt: skip
    batch = await client.batches.create(
        input_file_id=(await _upload(client, stack, lines, "retried")).id, endpoint="/v1/embeddings",
        completion_window="24h",
    )  # fmt: skip
    async with driver():
        done = await _wait(client, batch.id, FINAL)
    assert done.status == "completed" and done.request_counts is not None, done
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)
    assert len(calls) == len(faults) + 2  # every fault was met, then each line went through once
    output = await _lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == ["r0", "r1"]
    assert all(line["response"]["status_code"] == 200 and line["response"]["body"]["data"] for line in output)
    await client.close()


async def _bulk_records(stack: Stack, model: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = stack.names.request_topic(model, Lane.BULK)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.settings.kafka.bootstrap)
    await consumer.start()
    try:
        await consumer.topics()  # loads the cluster's metadata
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return 0  # the bulk topic is created with the first line sent: none sent yet

        ends = await consumer.end_offsets(partitions)
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


async def test_cancel_stops_the_lines_not_started(stack: Stack, driver: Any) -> None:
    client = _client(stack)
    lines = [_chat_line(f"c{i}", "hello", model="idle") for i in range(20)]  # no worker serves "idle"
    uploaded = await _upload(client, stack, lines, "cancel")
    async with driver():
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await _wait(client, batch.id, {"in_progress"})
        for _ in range(200):  # the window's lines are on the bulk lane
            if await _bulk_records(stack, "idle") >= 4:
                break
            await asyncio.sleep(0.05)
        cancelling = await client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        done = await _wait(client, batch.id, FINAL)
    assert done.status == "cancelled" and done.cancelled_at
    assert done.request_counts is not None and done.request_counts.total == 20
    assert done.request_counts.completed == done.request_counts.failed == 0
    assert done.output_file_id is None and done.error_file_id is None
    assert await _bulk_records(stack, "idle") == 4  # only the window was ever sent
    await client.close()


async def test_lines_obey_the_creating_keys_allow_list_and_token_budget(stack: Stack) -> None:
    """A line for a model outside the key's allow-list is a 403 permission_error line; lines take the key's token
    budget (an interactive request of the key is refused once the lines took it) and a line whose budget is not
    there waits (never a 429 line) until the batch is cancelled, when it is left unstarted."""
    _, secret = await ApiKeyStore(stack.redis, stack.names).create("batcher", models=("gen",))
    # 40 tokens that refill at 0.01/s: three lines of 17 (9 for the 35-byte messages as JSON, 8 new) cannot all run.
    settings = replace(stack.gateway, auth=True, key_token_rate=0.01, rate_burst_s=4000.0)
    lines = [_chat_line("g1", "hi", 8), _chat_line("fe", "hi", 8, model="fe"), _chat_line("g2", "hi", 8),
             _chat_line("g3", "hi", 8)]  # fmt: skip
    async with Gateway(settings) as gateway:
        await gateway.wait_ready()
        client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0, timeout=30)
        uploaded = await _upload(client, stack, lines, "allowed")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 60
        while True:
            seen = await client.batches.retrieve(batch.id)
            counts = seen.request_counts
            if counts is not None and counts.completed + counts.failed >= 3:
                break
            assert seen.status in ("validating", "in_progress") and time.monotonic() < deadline, seen
            await asyncio.sleep(0.1)
        assert counts.completed == 2 and counts.failed == 1, counts
        with pytest.raises(openai.RateLimitError):  # the batch's lines took the key's tokens
            await client.chat.completions.create(
                model="gen", messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
        await client.batches.cancel(batch.id)
        done = await _wait(client, batch.id, FINAL)
        output, errors = await _lines(client, done.output_file_id), await _lines(client, done.error_file_id)
        await client.close()
    assert done.status == "cancelled"
    assert sorted(line["custom_id"] for line in output) == ["g1", "g2"]
    assert [line["custom_id"] for line in errors] == ["fe"]  # g3 was never started: no 429 line
    response = errors[0]["response"]
    assert response["status_code"] == 403
    assert response["body"]["error"]["type"] == "permission_error"
    assert response["body"]["error"]["code"] == "FORBIDDEN"


def _spawn_gateway(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "gateway"], env=env, stdout=log, stderr=subprocess.STDOUT)


async def test_a_gateway_killed_mid_batch_is_replaced_and_no_line_is_lost_or_doubled(
    stack: Stack, driver: Any
) -> None:
    client = _client(stack)
    count = 40
    lines = [_chat_line(f"k{i}", genmodels.PROMPTS[i % 4], max_tokens=8) for i in range(count)]
    uploaded = await _upload(client, stack, lines, "kill")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    g = stack.gateway
    env = service_env(
        stack.settings, FLEET_GATEWAY_PORT="0", FLEET_GATEWAY_GRPC_PORT="0", FLEET_GATEWAY_FILES_DIR=g.files_dir,
        FLEET_GATEWAY_BATCH_POLL_S="0.2", FLEET_GATEWAY_BATCH_LEASE_S="1", FLEET_GATEWAY_BATCH_CHECKPOINT_S="0.2",
        FLEET_GATEWAY_BATCH_WINDOW="4",
    )  # fmt: skip
    log_path = stack.directory / f"gateway-{uuid.uuid4().hex[:6]}.log"
    process = _spawn_gateway(env, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:  # killed once some lines are committed and more remain
            current = await client.batches.retrieve(batch.id)
            assert current.request_counts is not None
            if current.request_counts.completed >= 8:
                break
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.02)
        process.kill()
        process.wait(10)
        assert current.request_counts.completed < count, "the batch ended before the gateway was killed"
        async with driver():
            done = await _wait(client, batch.id, FINAL, timeout_s=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.completed == count
    output = await _lines(client, done.output_file_id)
    seen = Counter(line["custom_id"] for line in output)
    assert seen == Counter(f"k{i}" for i in range(count))  # every line once: none lost, none doubled
    for line in output:
        index = int(line["custom_id"][1:])
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == _expected(stack, genmodels.PROMPTS[index % 4], 8)
    await client.close()


@pytest.mark.timeout(240)  # a worker process imports torch and loads the model on a shared machine
async def test_a_worker_killed_mid_stream_ends_the_stream_with_an_error_event(stack: Stack) -> None:
    worker = WorkerProcess(stack.settings, "gen2", stack.directory, FLEET_WORKER_CACHE_DIR=str(stack.directory / "c2"))
    try:
        await wait_worker_ready(stack.redis, stack.names, worker, timeout_s=150)
        client = _client(stack)
        content = genmodels.PROMPTS[0]  # its greedy answer runs all 120 tokens: no end of text before the kill
        stream = await client.chat.completions.create(
            model="gen2", messages=[{"role": "user", "content": content}], max_tokens=120, temperature=0, stream=True
        )
        pieces: list[str] = []
        with pytest.raises(openai.APIError) as failed:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    if not pieces:
                        worker.signal(signal.SIGSTOP)  # frozen at once: no more tokens, then killed
                        worker.signal(signal.SIGKILL)
                    pieces.append(chunk.choices[0].delta.content)
        # The gateway's stream idle timeout (2 s here) ends it: the worker's answer never comes.
        assert failed.value.body["code"] == "BACKEND_UNAVAILABLE"  # type: ignore[index]
        assert "no token" in failed.value.message
        assert 0 < len(pieces) < 120
        await client.close()
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.wait(10)
