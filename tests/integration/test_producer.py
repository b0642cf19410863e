"""The direct Kafka producer client against the real broker, Redis and an in-process worker."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from fleet.client.producer import FleetProducer
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import (
    BatchingConfig,
    ErrorCode,
    FleetSettings,
    InferenceResponse,
    ModelRecord,
    ModelRegistry,
    Names,
    RegistryError,
    ReplyKind,
    SchemaError,
)
from schemas.traffic import TrafficSplit
from workers import Worker

from .module_stack import ModuleStack, module_settings, module_stack


@pytest.fixture(scope="module")
async def producer_stack(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ModuleStack]:
    """A worker serving ``tiny`` (as the ``tiny_model`` fixture registers it) for the tests whose requests it
    answers (their request ids differ); the tests that need no worker, or change the registry, have their own."""
    path = tiny_mlp(tmp_path_factory.mktemp("producer") / "tiny.onnx")
    record = build_record("tiny", "1", path, batching=BatchingConfig(max_batch_size=32, max_queue_delay_ms=5))
    settings = module_settings(kafka_bootstrap, redis_url, "producer")
    async with module_stack(settings, [record], gateway=False) as stack:
        yield stack


def _reference(record: ModelRecord, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(record.artifact, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


async def test_infer_and_submit_round_trip_numpy(producer_stack: ModuleStack) -> None:
    fleet_settings, tiny_model = producer_stack.settings, producer_stack.records["tiny"]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    async with FleetProducer(fleet_settings, max_in_flight=64) as producer:
        outputs = await producer.infer("tiny", {"x": x})
        np.testing.assert_allclose(outputs["y"], _reference(tiny_model, x), rtol=1e-5, atol=1e-6)

        rows = rng.standard_normal((300, 16)).astype(np.float32)
        sent = {}
        for i in range(300):  # more than max_in_flight: submit waits for answers (backpressure)
            sent[await producer.submit("tiny", {"x": rows[i : i + 1]})] = i
            assert producer.in_flight <= 64
        got = {}
        async for result in producer.results(count=300):
            got[result.request_id] = result
    assert set(got) == set(sent)
    expected = _reference(tiny_model, rows)
    for request_id, result in got.items():
        assert result.ok and result.model == "tiny" and result.version == "1"
        np.testing.assert_allclose(result.outputs["y"], expected[sent[request_id]][None], rtol=1e-5, atol=1e-6)
    assert max(r.batch_size for r in got.values()) > 1  # the worker batched one-row records


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ({"x": np.ones((1, 15), np.float32)}, "shape"),
        ({"x": np.ones((1, 16), np.float64)}, "datatype"),
        ({"z": np.ones((1, 16), np.float32)}, "unexpected input"),
        ({}, "missing input"),
    ],
    ids=["shape", "dtype", "name", "missing"],
)
async def test_bad_input_fails_at_the_client(
    fleet_settings: FleetSettings, tiny_model: ModelRecord, inputs: dict[str, Any], fragment: str
) -> None:
    async with FleetProducer(fleet_settings) as producer:
        with pytest.raises(SchemaError) as info:
            await producer.submit("tiny", inputs)
        assert info.value.code is ErrorCode.INVALID_INPUT and fragment in info.value.message
        assert producer.in_flight == 0
        with pytest.raises(RegistryError) as missing:
            await producer.submit("nope", {"x": np.ones((1, 16), np.float32)})
        assert missing.value.code is ErrorCode.MODEL_NOT_FOUND
        with pytest.raises(RegistryError) as version:
            await producer.submit("tiny", {"x": np.ones((1, 16), np.float32)}, version="9")
        assert version.value.code is ErrorCode.VERSION_NOT_FOUND


async def test_result_key_delivery_and_stored_results(producer_stack: ModuleStack) -> None:
    fleet_settings, tiny_model = producer_stack.settings, producer_stack.records["tiny"]
    redis_client, names = producer_stack.redis, producer_stack.names
    x = np.full((2, 16), 0.5, np.float32)
    async with FleetProducer(fleet_settings, reply=ReplyKind.RESULT) as producer:
        request_id = await producer.submit("tiny", {"x": x}, request_id="job-1")
        result = await producer.wait_result(request_id, timeout_s=20)
        np.testing.assert_allclose(result.unwrap()["y"], _reference(tiny_model, x), rtol=1e-5, atol=1e-6)
        assert await producer.result("never-sent") is None
    # a result reply never touches a stream
    assert await redis_client.exists(names.client_reply_stream(producer.client_id)) == 0


async def test_unanswered_request_times_out(fleet_settings: FleetSettings, tiny_model: ModelRecord) -> None:
    """No worker serves the model: the request completes with DEADLINE_EXCEEDED instead of hanging."""
    async with FleetProducer(fleet_settings, timeout_s=0.3) as producer:
        await producer.submit("tiny", {"x": np.ones((1, 16), np.float32)})
        results = [r async for r in producer.results(count=1)]
    assert results[0].error is not None and results[0].error.code is ErrorCode.DEADLINE_EXCEEDED


async def test_a_resent_request_gets_the_first_answer(producer_stack: ModuleStack) -> None:
    """The same id sent twice (a resumed batch run): answered once, and the stored answer is found."""
    fleet_settings = producer_stack.settings
    x = np.ones((1, 16), np.float32)
    async with FleetProducer(fleet_settings, client_id="resend-test") as producer:
        await producer.submit("tiny", {"x": x}, request_id="r-1")
        first = [r async for r in producer.results(count=1)][0]
        stored = await producer.stored_results(["r-1", "r-2"])
    assert set(stored) == {"r-1"}
    np.testing.assert_array_equal(stored["r-1"].outputs["y"], first.outputs["y"])


async def test_bulk_lane_is_served_too(producer_stack: ModuleStack) -> None:
    fleet_settings, tiny_model = producer_stack.settings, producer_stack.records["tiny"]
    x = np.ones((1, 16), np.float32)
    async with FleetProducer(fleet_settings, lane="bulk") as producer:
        bulk = await producer.infer("tiny", {"x": x})
        interactive = await producer.infer("tiny", {"x": x}, lane="interactive")
    np.testing.assert_allclose(bulk["y"], _reference(tiny_model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(bulk["y"], interactive["y"])


async def test_output_topic_delivery(producer_stack: ModuleStack) -> None:
    """reply=TOPIC: the answers land on the Kafka topic the pipeline names (and in the result keys)."""
    fleet_settings, tiny_model = producer_stack.settings, producer_stack.records["tiny"]
    names = producer_stack.names
    topic = f"{names.namespace}.predictions"
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    x = np.random.default_rng(4).standard_normal((5, 16)).astype(np.float32)
    async with FleetProducer(fleet_settings, reply=ReplyKind.TOPIC, reply_topic=topic) as producer:
        ids = [await producer.submit("tiny", {"x": x[i : i + 1]}, request_id=f"p-{i}") for i in range(5)]
        with pytest.raises(RuntimeError):
            await producer.infer("tiny", {"x": x[:1]})
    consumer = AIOKafkaConsumer(**fleet_settings.kafka.client_kwargs(), auto_offset_reset="earliest")
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.start()
    got: dict[str, InferenceResponse] = {}
    try:
        deadline = time.monotonic() + 20
        while len(got) < 5 and time.monotonic() < deadline:
            for record in (await consumer.getmany(tp, timeout_ms=100)).get(tp, []):
                response = InferenceResponse.from_bytes(record.value)
                got[response.id] = response
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(ids)
    expected = _reference(tiny_model, x)
    for i in range(5):
        np.testing.assert_allclose(got[f"p-{i}"].outputs[0].to_numpy(), expected[i : i + 1], rtol=1e-5, atol=1e-6)


def test_reply_options_are_checked(fleet_settings: FleetSettings) -> None:
    with pytest.raises(ValueError):
        FleetProducer(fleet_settings, reply=ReplyKind.TOPIC)
    with pytest.raises(ValueError):
        FleetProducer(fleet_settings, reply_topic="out")
    with pytest.raises(ValueError):
        FleetProducer(fleet_settings, reply=ReplyKind.NONE)


async def test_unversioned_requests_follow_the_traffic_split_and_the_default(
    fleet_settings: FleetSettings, tiny_model: ModelRecord, worker: Worker, redis_client: Any, names: Names
) -> None:
    registry = ModelRegistry(redis_client, names)
    await registry.register(dataclasses.replace(tiny_model, version="2"))
    x = np.ones((1, 16), dtype=np.float32)

    async def versions_of(producer: FleetProducer, count: int) -> dict[str, str]:
        ids = [await producer.submit("tiny", {"x": x}) for _ in range(count)]
        answered = {r.request_id: r.version async for r in producer.results(count=count)}
        assert set(answered) == set(ids)
        return answered

    async with FleetProducer(fleet_settings, routing_ttl_s=0.1) as producer:
        assert set((await versions_of(producer, 20)).values()) == {"1"}  # no split: the default
        split = TrafficSplit.of({"1": 50, "2": 50})
        await registry.set_traffic("tiny", split)
        await asyncio.sleep(0.15)  # past the routing TTL
        answered = await versions_of(producer, 100)
        # each id on the version the gateway would pick for it (the same hash), both versions used
        assert all(version == split.pick(request_id) for request_id, version in answered.items())
        assert set(answered.values()) == {"1", "2"}
        await registry.set_traffic("tiny", TrafficSplit.of({"2": 100}))
        await registry.set_default("tiny", "2")
        await asyncio.sleep(0.15)
        assert set((await versions_of(producer, 20)).values()) == {"2"}  # promoted
        assert (await producer.model_record("tiny")).version == "2"
