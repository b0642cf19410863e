"""Pipelines end to end on one module-scoped stack (a gateway, a worker serving every step's model): a three-step
pipeline (Python preprocess -> ONNX MLP -> Python postprocess) answers what running the steps in-process
answers, over HTTP JSON, binary and async; a join of two branches; a failing step answers with its name and
is dead-lettered with the pipeline's context; a redelivered step never makes a second answer."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from fleet.cli import pipelines as cli
from fleet.cli.status import gather_status, render
from fleet.client import FleetClient, FleetHTTPError
from fleet.client.connection import Target
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from fleet.pipeline.batch import BatchOptions, BatchRun
from gateway import Gateway, GatewaySettings
from gateway.jobs import JobStore, OutboxSweeper
from gateway.publisher import RequestPublisher
from schemas import (
    DeadLetter,
    FleetSettings,
    Framework,
    InferenceRequest,
    InferenceResponse,
    KafkaSettings,
    ModelRecord,
    ModelRegistry,
    Names,
    RedisSettings,
    ReplyAddress,
    ReplyKind,
    SchemaError,
    Tensor,
    now_ms,
    parse_spec,
)
from schemas.jobs import F_CLIENT_ID, F_CREATED, F_DEADLINE, F_EXPIRES, F_MODEL, F_VERSION
from schemas.pipeline_plan import PipelinePlan
from schemas.pipelines import (
    PipelineStore,
    check_pipeline,
    first_requests,
    outbox_request,
    parse_pipeline,
    resolve,
    step_records,
)
from schemas.topics import ensure_model_topics
from tests.pipelinemodels import Add, Softmax, Standardize
from workers import Worker, WorkerSettings

THREE_STEPS = {
    "name": "classify",
    "steps": [
        {"name": "pre", "model": "standardize", "inputs": {"features": "inputs.features"}},
        {"name": "mlp", "model": "mlp", "version": "1", "inputs": {"x": "pre.x"}},
        {"name": "post", "model": "softmax", "inputs": {"logits": "mlp.y"}},
    ],
    "outputs": {"probs": "post.probs", "label": "post.label"},
}
JOIN = {
    "name": "branches",
    "steps": [
        {"name": "left", "model": "mlp", "inputs": {"x": "inputs.features"}},
        {"name": "right", "model": "mlp", "inputs": ["pre.x"]},
        {"name": "pre", "model": "standardize", "inputs": ["inputs.features"]},
        {"name": "both", "model": "add", "inputs": {"a": "left.y", "b": "right.y"}},
    ],
    "outputs": {"sum": "both.sum", "left": "left.y"},
}
FAILING = {
    "name": "failing",
    "steps": [
        {"name": "mlp", "model": "mlp", "inputs": {"x": "inputs.features"}},
        {"name": "boom", "model": "broken", "inputs": {"x": "mlp.y"}},
        {"name": "post", "model": "softmax", "inputs": {"logits": "boom.y"}},
    ],
    "outputs": {"probs": "post.probs"},
}


@dataclass
class Stack:
    """The module's gateway URL, names, settings, the MLP in-process and the applied pipelines."""

    url: str
    settings: FleetSettings
    names: Names
    redis: Any
    mlp: ort.InferenceSession
    records: dict[str, ModelRecord]


def _records(directory: Path) -> dict[str, ModelRecord]:
    blob = directory / "unused.bin"
    blob.write_bytes(b"python models read no artifact")

    def python(name: str, cls: str, inputs: str, outputs: str) -> ModelRecord:
        return build_record(
            name, "1", blob, framework=Framework.PYTHON, factory=f"tests.pipelinemodels:{cls}",
            inputs=tuple(parse_spec(s) for s in inputs.split()), outputs=tuple(parse_spec(s) for s in outputs.split()),
        )  # fmt: skip

    return {
        "mlp": build_record("mlp", "1", tiny_mlp(directory / "mlp.onnx")),
        "standardize": python("standardize", "Standardize", "features:FP32:-1,16", "x:FP32:-1,16"),
        "softmax": python("softmax", "Softmax", "logits:FP32:-1,4", "probs:FP32:-1,4 label:INT64:-1"),
        "add": python("add", "Add", "a:FP32:-1,4 b:FP32:-1,4", "sum:FP32:-1,4"),
        "broken": python("broken", "Broken", "x:FP32:-1,4", "y:FP32:-1,4"),
    }


async def apply(redis: Any, names: Names, doc: dict[str, Any]) -> PipelinePlan:
    """Check ``doc`` against the registry and store it (as ``fleet pipelines apply`` does)."""
    plan = parse_pipeline(doc)
    check_pipeline(plan, await step_records(plan, ModelRegistry(redis, names).get))
    stored, _ = await PipelineStore(redis, names).apply(plan)
    return stored


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    names = Names(f"t-pipes-{uuid.uuid4().hex[:8]}")
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap,
        fetch_max_wait_ms=10,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        request_timeout_ms=3000,
        partitions=1,
    )
    settings = FleetSettings(namespace=names.namespace, kafka=kafka, redis=RedisSettings(url=redis_url))
    directory = tmp_path_factory.mktemp("pipes")
    records = await asyncio.to_thread(_records, directory)
    redis = settings.redis.client()
    registry = ModelRegistry(redis, names)
    for record in records.values():
        await registry.register(record)
        await ensure_model_topics(settings.kafka, names, record.name)
    for doc in (THREE_STEPS, JOIN, FAILING):
        await apply(redis, names, doc)
    mlp = ort.InferenceSession(records["mlp"].artifact, providers=["CPUExecutionProvider"])
    worker_settings = WorkerSettings(models=tuple(records), fleet=settings, cache_dir=str(directory / "cache"))
    try:
        async with Gateway(GatewaySettings(fleet=settings, port=0, default_timeout_s=20.0)) as gateway:
            await gateway.wait_ready()
            async with Worker(worker_settings) as worker:
                await worker.wait_ready(60)
                yield Stack(gateway.url, settings, names, redis, mlp, records)
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()


def features(rows: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)


def in_process(stack: Stack, x: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
    """The three steps run here, one after another."""
    pre = Standardize("", "cpu").predict({"features": x})["x"]
    (logits,) = stack.mlp.run(None, {"x": pre})
    return Softmax("", "cpu").predict({"logits": logits})


@pytest.mark.parametrize("binary", [False, True])
async def test_three_steps_answer_what_the_steps_answer_in_process(stack: Stack, binary: bool) -> None:
    x = features(5, seed=1)
    async with FleetClient(stack.url, timeout_s=20) as client:
        result = await client.infer("classify", {"features": x}, pipeline=True, binary=binary)
    expected = in_process(stack, x)
    assert result.model == "classify" and result.model_version == "1"
    np.testing.assert_allclose(result.outputs["probs"], expected["probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.outputs["label"], expected["label"])


async def test_an_async_pipeline_job_stores_the_pipelines_answer(stack: Stack) -> None:
    x = features(3, seed=2)
    async with FleetClient(stack.url, timeout_s=20) as client:
        job_id = await client.submit("classify", {"features": x}, pipeline=True)
        result = await client.wait(job_id, timeout_s=20)
    np.testing.assert_allclose(result.outputs["probs"], in_process(stack, x)["probs"], rtol=1e-5, atol=1e-6)


async def test_a_join_of_two_branches_fires_once_with_both(stack: Stack) -> None:
    x = features(4, seed=3)
    async with FleetClient(stack.url, timeout_s=20) as client:
        results = await asyncio.gather(*(client.infer("branches", {"features": x}, pipeline=True) for _ in range(4)))
    (left,) = stack.mlp.run(None, {"x": x})
    (right,) = stack.mlp.run(None, {"x": Standardize("", "cpu").predict({"features": x})["x"]})
    expected = Add("", "cpu").predict({"a": left, "b": right})["sum"]
    for result in results:
        np.testing.assert_allclose(result.outputs["sum"], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.outputs["left"], left, rtol=1e-5, atol=1e-6)


async def test_a_failing_step_answers_with_its_name_and_is_dead_lettered(stack: Stack) -> None:
    async with FleetClient(stack.url, timeout_s=20) as client:
        with pytest.raises(FleetHTTPError) as caught:
            await client.infer("failing", {"features": features(2)}, pipeline=True)
    assert caught.value.status == 500
    assert "MODEL_ERROR" in str(caught.value.code)
    assert "step 'boom' (model broken:1)" in str(caught.value) and "broken on purpose" in str(caught.value)
    letters = await _dead_letters(stack)
    # The pipeline's context is in the dead letter's own headers; the topic record's name the step's model.
    mine = [(dl, headers) for dl, headers in letters if dict(dl.headers).get("fleet-pipeline") == b"failing"]
    assert len(mine) == 1, letters
    letter, headers = mine[0]
    assert dict(letter.headers)["fleet-step"] == b"boom" and headers["fleet-model"] == b"broken"
    request = InferenceRequest.from_bytes(letter.value)
    assert request.model == "broken" and request.reply.route is not None
    assert request.reply.route.plan.name == "failing" and request.reply.route.step == "boom"
    assert [t.name for t in request.inputs] == ["x"] and "step 'boom'" in letter.reason


async def _dead_letters(stack: Stack) -> list[tuple[DeadLetter, dict[str, bytes]]]:
    consumer = AIOKafkaConsumer(
        stack.names.dlq_topic, bootstrap_servers=stack.settings.kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        found: list[tuple[DeadLetter, dict[str, bytes]]] = []
        for _ in range(50):
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                found += [(DeadLetter.from_bytes(r.value), dict(r.headers)) for r in records]
            if found and not batch:
                break
        return found
    finally:
        await consumer.stop()


async def test_a_redelivered_step_passes_on_its_first_answer_only(stack: Stack) -> None:
    """The entry step's record produced three times (redeliveries): one answer reaches the caller's stream, with
    one first-result marker per step (three copies in separate rounds could, if a round delivered while another
    had not marked yet, send the same answer twice: the gateway keeps the first per request id)."""
    names, redis = stack.names, stack.redis
    plan = parse_pipeline(THREE_STEPS)
    plan = resolve(
        (await PipelineStore(redis, names).get("classify")), await step_records(plan, ModelRegistry(redis, names).get)
    )
    stream = f"{names.namespace}:test-replies-{uuid.uuid4().hex[:6]}"
    caller = ReplyAddress(ReplyKind.STREAM, stream)
    x = features(2, seed=4)
    request_id = f"dup-{uuid.uuid4().hex[:8]}"
    (entry,) = first_requests(plan, request_id, [Tensor.from_numpy("features", x)], caller, "interactive", None)
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka.bootstrap)
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(names.request_topic("standardize"), entry.to_bytes(), key=entry.id.encode())
        answers: list[Any] = []
        for _ in range(100):
            answers = await redis.xrange(stream)
            if answers:
                await asyncio.sleep(1.0)  # time for any second answer to arrive as well
                answers = await redis.xrange(stream)
                break
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()
    assert len(answers) == 1, [InferenceResponse.from_bytes(fields[b"r"]).worker for _, fields in answers]
    step_keys = [k async for k in redis.scan_iter(match=f"*:step:{entry.id.split('~')[0]}:*")]
    assert len(step_keys) == 3  # one first-result marker per step


async def test_a_pipeline_that_does_not_fit_its_steps_is_refused_naming_the_step_and_tensor(stack: Stack) -> None:
    wrong = {
        "name": "wrong",
        "steps": [
            {"name": "mlp", "model": "mlp", "inputs": {"x": "inputs.features"}},
            {"name": "post", "model": "standardize", "inputs": {"features": "mlp.y"}},
        ],
        "outputs": {"x": "post.x"},
    }
    refusal = r"step 'post': input 'features' of model standardize:1 is features:FP32\[-1, 16\], but 'mlp.y' is y:FP32"
    with pytest.raises(SchemaError, match=refusal):
        await apply(stack.redis, stack.names, wrong)


async def test_an_unknown_pipeline_is_404(stack: Stack) -> None:
    async with FleetClient(stack.url, timeout_s=5) as client:
        with pytest.raises(FleetHTTPError) as caught:
            await client.infer("nope", {"features": features(1)}, pipeline=True)
    assert caught.value.status == 404


async def test_fleet_batch_run_through_a_pipeline_writes_what_the_steps_answer(stack: Stack, tmp_path: Path) -> None:
    x = features(12, seed=5)
    source, output = tmp_path / "rows.npy", tmp_path / "out.npy"
    np.save(source, x)
    options = BatchOptions("classify", source, output, pipeline=True, rows_per_request=3, output_name="probs")
    summary = await BatchRun(stack.settings, options).run()
    assert (summary.done, summary.failed) == (4, 0)  # records = requests of 3 rows
    np.testing.assert_allclose(np.load(output), in_process(stack, x)["probs"], rtol=1e-5, atol=1e-6)


async def test_fleet_pipelines_apply_list_show_remove(stack: Stack, tmp_path: Path, capsys: Any) -> None:
    doc = {**THREE_STEPS, "name": "cli-pipe"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    target = Target(stack.settings, stack.url, tmp_path)
    args = argparse.Namespace(file=path, pipeline="cli-pipe", version=None)
    assert await cli.run_apply(target, args) == 0
    assert "pipeline cli-pipe applied as version 1" in capsys.readouterr().out
    assert await cli.run_apply(target, args) == 0
    assert "unchanged at version 1" in capsys.readouterr().out
    doc["steps"][2]["model"] = "softmax"
    doc["outputs"] = {"probs": "post.probs"}
    path.write_text(yaml.safe_dump(doc))
    assert await cli.run_apply(target, args) == 0
    assert "applied as version 2" in capsys.readouterr().out
    assert await cli.run_list(target, args) == 0
    assert "cli-pipe" in capsys.readouterr().out
    assert await cli.run_show(target, args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 2 and shown["inputs"] == ["features:FP32[-1, 16]"]
    assert await cli.run_remove(target, args) == 0
    with pytest.raises(ValueError, match="no pipeline 'cli-pipe'"):
        await cli.run_remove(target, args)


async def test_fleet_status_shows_each_pipelines_steps_with_their_lag_and_workers(
    stack: Stack, tmp_path: Path
) -> None:
    report = await gather_status(Target(stack.settings, stack.url, tmp_path))
    pipelines = {p["pipeline"]: p for p in report.pipelines}
    assert {"classify", "branches", "failing"} <= set(pipelines), report.problems
    classify = pipelines["classify"]
    assert [(s["step"], s["model"], s["version"]) for s in classify["steps"]] == [
        ("pre", "standardize", "1"), ("mlp", "mlp", "1"), ("post", "softmax", "1")
    ]  # fmt: skip
    for step in classify["steps"]:
        assert step["workers"] == 1 and isinstance(step["lag"], int) and step["registered"]
    assert [s["step"] for s in pipelines["branches"]["steps"]] == ["left", "pre", "right", "both"]
    lines = render(report).splitlines()
    at = lines.index(f"  classify v{classify['version']}: pre -> mlp -> post")
    assert lines[at + 1].split() == ["STEP", "MODEL", "LAG", "WORKERS", "DESIRED"]
    assert lines[at + 2].split()[:2] == ["pre", "standardize:1"] and lines[at + 2].split()[3] == "1"


async def test_an_idempotency_key_gives_a_pipeline_job_once(stack: Stack) -> None:
    x, key = features(2, seed=6), f"key-{uuid.uuid4().hex[:8]}"
    async with FleetClient(stack.url, timeout_s=20) as client:
        job_id = await client.submit("classify", {"features": x}, pipeline=True, idempotency_key=key)
        assert await client.submit("classify", {"features": x}, pipeline=True, idempotency_key=key) == job_id
        with pytest.raises(FleetHTTPError) as caught:
            await client.submit("classify", {"features": x + 1}, pipeline=True, idempotency_key=key)
        assert caught.value.status == 409 and job_id in str(caught.value)
        result = await client.wait(job_id, timeout_s=20)
    np.testing.assert_allclose(result.outputs["probs"], in_process(stack, x)["probs"], rtol=1e-5, atol=1e-6)
    answers = [k async for k in stack.redis.scan_iter(match=f"*:step:{job_id}:post")]
    assert len(answers) == 1  # one job ran


async def test_the_outbox_sweep_starts_every_entry_step_of_a_pipeline_job(stack: Stack) -> None:
    """A job its gateway stored but did not publish: the sweep publishes both entry steps of the join."""
    names, redis = stack.names, stack.redis
    plan = resolve(
        await PipelineStore(redis, names).get("branches"),
        await step_records(parse_pipeline(JOIN), ModelRegistry(redis, names).get),
    )
    assert len(plan.entry_steps()) == 2
    x = features(3, seed=7)
    job_id, created = names.new_job_id(), now_ms()
    caller = ReplyAddress(ReplyKind.RESULT, "", ttl_s=600)
    inputs = [Tensor.from_numpy("features", x)]
    first = first_requests(plan, job_id, inputs, caller, "interactive", created + 20_000)[0]
    fields = {F_MODEL: "branches", F_VERSION: str(plan.version), F_CLIENT_ID: "", F_CREATED: repr(created),
              F_DEADLINE: repr(created + 20_000), F_EXPIRES: repr(created + 600_000)}  # fmt: skip
    jobs = JobStore(redis, names, 5.0)
    topic = names.request_topic(first.model)
    publisher = RequestPublisher(stack.settings.kafka, 5.0, names=names)
    await publisher.start()
    try:
        deadline = time.monotonic() + 30
        while not publisher.connected:
            assert time.monotonic() < deadline, "the publisher never connected"
            await asyncio.sleep(0.05)
        await jobs.create(job_id, fields, 600, None, topic=topic, request=outbox_request(first, inputs),
                          republish_at_ms=created)  # fmt: skip
        # The stack's gateway sweeps its outbox too (every second) and may claim the entry before this sweeper:
        # either sweep publishes it and takes it out of the outbox. Which one did is beside the point: only a
        # sweep publishes this job, and its answer below needs both entry steps (the join fires on both only).
        # A sweep that finds nothing (the gateway's claimed it) or whose publish timed out is run again.
        sweeper = OutboxSweeper(jobs, publisher, 5.0)
        while await jobs.outbox_entry(job_id) is not None:
            assert time.monotonic() < deadline, "no sweep published the job from the outbox"
            if not await sweeper.sweep():
                await asyncio.sleep(0.05)
    finally:
        await publisher.stop()
    async with FleetClient(stack.url, timeout_s=20) as client:
        result = await client.wait(job_id, timeout_s=20)
    (left,) = stack.mlp.run(None, {"x": x})
    (right,) = stack.mlp.run(None, {"x": Standardize("", "cpu").predict({"features": x})["x"]})
    np.testing.assert_allclose(result.outputs["sum"], left + right, rtol=1e-5, atol=1e-6)
