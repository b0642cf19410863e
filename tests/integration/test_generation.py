"""Generation through the whole path (gateway, Kafka, worker, Redis) with a tiny random Llama built in code: greedy
answers equal ``generate()`` in-process token for token while sequences join the running batch; the official
``openai`` SDK, unmodified, for chat and text completions (streamed and not) and embeddings; a caller that goes
away cancels its generation on the worker.

One stack (gateway + one worker serving a text-generation and a feature-extraction model) for the module.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest

from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import ModelRegistry, Names
from schemas.generation import cancel_key
from schemas.topics import ensure_model_topics
from tests import genmodels, textmodels
from tests.integration.test_any_models import _settings
from workers import Worker, WorkerSettings

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")
pytestmark = pytest.mark.integration


@dataclass
class Stack:
    """The module's gateway URL, worker and the in-process models."""

    url: str
    worker: Worker
    llama: tuple[Any, Any]
    bert: tuple[Any, Any]
    names: Names
    redis: Any


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    names = Names(f"t-gen-{uuid.uuid4().hex[:8]}")
    settings = _settings(kafka_bootstrap, redis_url, names)
    directory = tmp_path_factory.mktemp("generation")

    def build() -> tuple[Any, ...]:
        path, model, tok = genmodels.llama(directory / "llama")
        fe_path, fe_model, fe_tok = textmodels.bert(directory / "fe", "feature-extraction")
        records = (build_record("gen", "1", path, load=False), build_record("fe", "1", fe_path, load=False))
        return records, (model, tok), (fe_model, fe_tok)

    records, llama, bert = await asyncio.to_thread(build)
    redis = settings.redis.client()
    registry = ModelRegistry(redis, names)
    for record in records:
        await registry.register(record)
        await ensure_model_topics(settings.kafka, names, record.name)
    worker_settings = WorkerSettings(
        models=("gen", "fe"), fleet=settings, cache_dir=str(directory / "cache"), max_sequences=8
    )
    try:
        async with Gateway(GatewaySettings(fleet=settings, port=0, default_timeout_s=30.0)) as gateway:
            await gateway.wait_ready()
            async with Worker(worker_settings) as worker:
                await worker.wait_ready(90)
                yield Stack(gateway.url, worker, llama, bert, names, redis)
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()


def _client(stack: Stack) -> Any:
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=30)


async def test_greedy_generation_equals_generate_in_process_token_for_token(stack: Stack) -> None:
    model, tok = stack.llama
    expected = {p: genmodels.greedy(model, tok, p, 12) for p in genmodels.PROMPTS}
    async with aiohttp.ClientSession() as session:

        async def ask(prompt: str) -> dict[str, Any]:
            body = {"text_input": prompt, "parameters": {"max_tokens": 12, "temperature": 0}}
            async with session.post(f"{stack.url}/v2/models/gen/generate", json=body) as response:
                assert response.status == 200, await response.text()
                return dict(await response.json())

        # Sent together: later prompts join the batch the earlier ones are decoding in.
        answers = await asyncio.gather(*(ask(p) for p in genmodels.PROMPTS))
    for prompt, answer in zip(genmodels.PROMPTS, answers, strict=True):
        ids = expected[prompt]
        assert answer["text_output"] == tok.decode(ids, skip_special_tokens=True), prompt
        assert answer["completion_tokens"] == len(ids)
        assert answer["finish_reason"] == ("length" if len(ids) == 12 else "stop")


async def test_generate_stream_sends_the_text_in_pieces_as_server_sent_events(stack: Stack) -> None:
    model, tok = stack.llama
    prompt = genmodels.PROMPTS[0]
    body = {"text_input": prompt, "parameters": {"max_tokens": 12, "temperature": 0}}
    pieces: list[str] = []
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/v2/models/gen/generate_stream", json=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for line in response.content:
                if line.startswith(b"data: "):
                    pieces.append(__import__("json").loads(line[6:])["text_output"])
    assert len(pieces) > 2
    assert "".join(pieces) == tok.decode(genmodels.greedy(model, tok, prompt, 12), skip_special_tokens=True)


async def test_openai_sdk_chat_completion_with_and_without_streaming(stack: Stack) -> None:
    client = _client(stack)
    messages = [{"role": "user", "content": "hello world"}]
    whole = await client.chat.completions.create(model="gen", messages=messages, max_tokens=10, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage is not None and whole.usage.completion_tokens == 10
    assert whole.choices[0].finish_reason == "length"
    # The fallback chat template (the tokenizer has none): "user: hello world\nassistant:"
    model, tok = stack.llama
    ids = genmodels.greedy(model, tok, "user: hello world\nassistant:", 10)
    assert whole.choices[0].message.content == tok.decode(ids, skip_special_tokens=True)
    assert whole.usage.prompt_tokens == len(tok("user: hello world\nassistant:")["input_ids"])
    stream = await client.chat.completions.create(
        model="gen", messages=messages, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    deltas, reasons, usage = [], [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(deltas) == whole.choices[0].message.content
    assert reasons[-1] == "length" and usage is not None and usage.completion_tokens == 10
    await client.close()


async def test_openai_sdk_completion_stop_seed_and_errors(stack: Stack) -> None:
    client = _client(stack)
    plain = await client.completions.create(model="gen", prompt="the fleet", max_tokens=12, temperature=0)
    text = plain.choices[0].text
    assert plain.usage is not None and plain.usage.total_tokens == plain.usage.prompt_tokens + len(
        genmodels.greedy(*stack.llama, "the fleet", 12))  # fmt: skip
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    stopped = await client.completions.create(model="gen", prompt="the fleet", max_tokens=12, temperature=0, stop=stop)
    assert stopped.choices[0].text == text[: text.find(stop)] and stopped.choices[0].finish_reason == "stop"
    sampled = [
        await client.completions.create(model="gen", prompt="the fleet", max_tokens=8, temperature=1.0, seed=7)
        for _ in range(2)
    ]
    assert sampled[0].choices[0].text == sampled[1].choices[0].text
    with pytest.raises(openai.NotFoundError) as missing:
        await client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert missing.value.body["code"] == "MODEL_NOT_FOUND"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model="gen", prompt="x", max_tokens=0)
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model="fe", prompt="x", max_tokens=2)
    models = await client.models.list()
    assert {m.id for m in models.data} >= {"gen", "fe"}
    await client.close()


async def test_openai_sdk_embeddings_equal_the_model_in_process(stack: Stack) -> None:
    import torch

    client = _client(stack)
    texts = ["the fleet is great", "bad workers"]
    answer = await client.embeddings.create(model="fe", input=texts)
    model, tok = stack.bert
    encoded = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    assert np.allclose(np.array([d.embedding for d in answer.data]), expected, atol=1e-5)
    await client.close()


async def test_a_caller_that_disconnects_cancels_the_generation_on_the_worker(stack: Stack) -> None:
    consumer = next(c for c in stack.worker.consumers if c.model == "gen")
    # Greedy: this model runs 900 tokens without its end token (sampled, it may end after a few dozen, before the
    # cancel could land).
    body = {"text_input": "tokens", "parameters": {"max_tokens": 900, "temperature": 0.0}}
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{stack.url}/v2/models/gen/generate_stream", json=body)
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        response.close()  # the caller goes away after the first piece
    # The gateway notices at its next write and sets the cancel marker; the worker ends the sequence.
    async with asyncio.timeout(20):
        # Polled: the marker is in Redis and the count in another component, neither signals.
        while not [k async for k in stack.redis.scan_iter(match=cancel_key(stack.names, "*"))]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        while consumer.in_flight:  # type: ignore[attr-defined]  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert consumer.stats.succeeded < consumer.stats.completed  # the cancelled one answered CANCELLED
