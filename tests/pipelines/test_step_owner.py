"""A step passed on twice (a worker crashed after passing it on, before marking it) answers the caller once.

The step routers here are the workers' own (`workers.steps.StepRouter`) against the real broker and Redis; the
records of each step are read from its topic and answered by running the step's model in the test, as a worker
would. A crash is the router's ``before_mark`` seam raising: the records for the next step are in Kafka, the
markers are not set, and the same record is delivered again (its offset was not committed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry

from fleet.demo.modelgen import tiny_mlp
from schemas import FleetSettings, InferenceRequest, InferenceResponse, Names, ReplyAddress, ReplyKind, Tensor
from schemas.pipelines import first_requests, parse_pipeline
from schemas.topics import ensure_model_topics
from tests.pipelinemodels import Softmax, Standardize
from workers.deadletter import DeadLetterWriter
from workers.steps import StepRouter, step_metrics

THREE_STEPS = {
    "name": "classify",
    "steps": [
        {"name": "pre", "model": "standardize", "inputs": {"features": "inputs.features"}},
        {"name": "mlp", "model": "mlp", "inputs": {"x": "pre.x"}},
        {"name": "post", "model": "softmax", "inputs": {"logits": "mlp.y"}},
    ],
    "outputs": {"probs": "post.probs"},
}


class Crash(Exception):
    """The worker dies between passing a step on and marking it."""


async def _crash() -> None:
    raise Crash


@pytest.fixture
async def producer(fleet_settings: FleetSettings) -> AsyncIterator[AIOKafkaProducer]:
    kafka = AIOKafkaProducer(bootstrap_servers=fleet_settings.kafka.bootstrap)
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.stop()


async def _records(settings: FleetSettings, topic: str, at_least: int) -> list[InferenceRequest]:
    """Every record of ``topic`` (one partition), once there are ``at_least`` and nothing more comes."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        found: list[InferenceRequest] = []
        for _ in range(100):
            batch = await consumer.getmany(timeout_ms=200)
            found += [InferenceRequest.from_bytes(r.value) for records in batch.values() for r in records]
            if len(found) >= at_least and not batch:
                return found
        raise AssertionError(f"{len(found)} record(s) on {topic}, expected at least {at_least}")
    finally:
        await consumer.stop()


async def test_a_step_passed_on_twice_across_crashes_answers_the_caller_once(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    for model in ("standardize", "mlp", "softmax"):
        await ensure_model_topics(fleet_settings.kafka, names, model, partitions=1)
    mlp = ort.InferenceSession(str(tiny_mlp(tmp_path / "mlp.onnx")), providers=["CPUExecutionProvider"])
    models: dict[str, Callable[[npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]] = {
        "standardize": lambda x: Standardize("", "cpu").predict({"features": x}),
        "mlp": lambda x: {"y": mlp.run(None, {"x": x})[0]},
        "softmax": lambda x: Softmax("", "cpu").predict({"logits": x}),
    }

    def answer(request: InferenceRequest) -> tuple[ReplyAddress, InferenceResponse]:
        outputs = models[request.model](request.inputs[0].to_numpy())
        tensors = tuple(Tensor.from_numpy(name, value) for name, value in outputs.items())
        return request.reply, InferenceResponse(request.id, request.model, request.version, outputs=tensors)

    def router(before_mark: Callable[[], Any] | None = None) -> StepRouter:
        metrics = step_metrics(CollectorRegistry())
        dead_letters = DeadLetterWriter(producer, names)
        return StepRouter("m", redis_client, names, producer, dead_letters, metrics, "w", before_mark=before_mark)

    plan = parse_pipeline(THREE_STEPS).resolved({"pre": "1", "mlp": "1", "post": "1"})
    caller = ReplyAddress(ReplyKind.STREAM, names.reply_stream(f"caller-{uuid.uuid4().hex[:6]}"))
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    request_id = f"r-{uuid.uuid4().hex[:8]}"
    (entry,) = first_requests(plan, request_id, [Tensor.from_numpy("features", x)], caller, "interactive", None)

    # pre: passed on, crash before the marker; the same record again: passed on a second time (two mlp records).
    with pytest.raises(Crash):
        await router(_crash).deliver_some([answer(entry)])
    await router().deliver_some([answer(entry)])
    first, duplicate = await _records(fleet_settings, names.request_topic("mlp"), 2)
    assert first.id == duplicate.id == f"{request_id}~mlp"
    # mlp: the first record passes on and crashes before its marker; the duplicate comes meanwhile (another
    # worker); then the first record again.
    with pytest.raises(Crash):
        await router(_crash).deliver_some([answer(first)])
    await router().deliver_some([answer(duplicate)])
    await router().deliver_some([answer(first)])
    posts = await _records(fleet_settings, names.request_topic("softmax"), 2)
    # post: its first record answers the caller; before it is marked, its other records come (other workers).
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        arrived.set()
        await release.wait()

    passing = asyncio.create_task(router(slow).deliver_some([answer(posts[0])]))
    await asyncio.wait_for(arrived.wait(), 10)
    for record in posts[1:]:
        await router().deliver_some([answer(record)])
    release.set()
    await passing

    entries = await redis_client.xrange(caller.target)
    answers = [InferenceResponse.from_bytes(fields[b"r"]) for _, fields in entries]
    assert [a.id for a in answers] == [request_id], [a.id for a in answers]
    expected = Softmax("", "cpu").predict({"logits": mlp.run(None, {"x": Standardize("", "cpu").predict(
        {"features": x})["x"]})[0]})["probs"]  # fmt: skip
    np.testing.assert_allclose(answers[0].outputs[0].to_numpy(), expected, rtol=1e-5, atol=1e-6)


async def test_a_duplicate_record_of_a_step_is_dropped_while_its_owner_passes_it_on(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, producer: AIOKafkaProducer
) -> None:
    """Two records of one step answered at the same time (two workers): one passes on, the other is dropped."""
    for model in ("standardize", "mlp"):
        await ensure_model_topics(fleet_settings.kafka, names, model, partitions=1)
    plan = parse_pipeline(THREE_STEPS).resolved({"pre": "1", "mlp": "1", "post": "1"})
    caller = ReplyAddress(ReplyKind.STREAM, names.reply_stream("unused"))
    x = np.ones((1, 16), dtype=np.float32)
    copies = [
        first_requests(plan, "same", [Tensor.from_numpy("features", x)], caller, "interactive", None)[0]
        for _ in range(2)
    ]
    assert copies[0].id == copies[1].id and copies[0].reply.route != copies[1].reply.route
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        arrived.set()
        await release.wait()

    out = Tensor.from_numpy("x", x)
    registry = CollectorRegistry()
    metrics = step_metrics(registry)
    owner = StepRouter("m", redis_client, names, producer, DeadLetterWriter(producer, names), metrics, "w1",
                       before_mark=slow)  # fmt: skip
    other = StepRouter("m", redis_client, names, producer, DeadLetterWriter(producer, names), metrics, "w2")
    passing = asyncio.create_task(
        owner.deliver_some([(copies[0].reply, InferenceResponse("same~pre", "standardize", "1", outputs=(out,)))])
    )
    await asyncio.wait_for(arrived.wait(), 10)
    await other.deliver_some([(copies[1].reply, InferenceResponse("same~pre", "standardize", "1", outputs=(out,)))])
    release.set()
    await passing
    assert [r.id for r in await _records(fleet_settings, names.request_topic("mlp"), 1)] == ["same~mlp"]
