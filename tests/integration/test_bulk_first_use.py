"""A model registered without a bulk topic: the first bulk request creates it (with the request topic's partition
count: the broker's auto-creation would give its own default) and is served, through the gateway and through
``fleet batch run``; a per-model worker creates it before its bulk lane subscribes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from fleet.pipeline.batch import BatchOptions, BatchRun
from gateway import Gateway
from schemas import FleetSettings, ModelRecord, ModelRegistry, Names
from schemas.topics import ensure_model_topics, topic_partitions
from workers import Worker, WorkerSettings

pytestmark = pytest.mark.integration

#: Partitions of the model's request topic: neither the settings' default (4 in tests) nor the local broker's
#: auto-creation count (4), so a bulk topic with 3 partitions was created from the request topic.
PARTITIONS = 3


@pytest.fixture
async def model(fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path) -> ModelRecord:
    """``tiny`` registered as ``fleet models register --partitions 3`` does: its request topic only."""
    record = build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"))
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, "tiny", PARTITIONS)
    bulk = names.bulk_topic("tiny")
    assert await topic_partitions(fleet_settings.kafka, [bulk]) == {}
    return record


@pytest.fixture
async def pool_worker(fleet_settings: FleetSettings, model: ModelRecord, tmp_path: Path) -> AsyncIterator[Worker]:
    """A pool-mode worker serving ``tiny`` (it never creates topics; it asks again for missing ones every
    ``pool_missing_topic_recheck_s``, here a heartbeat)."""
    settings = WorkerSettings(
        fleet=fleet_settings,
        models=("tiny",),
        mode="pool",
        heartbeat_interval_s=0.5,
        pool_missing_topic_recheck_s=0.5,
        cache_dir=str(tmp_path / "cache"),
        measure_footprint=False,
    )
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        yield worker


def _reference(record: ModelRecord, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(record.artifact, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


async def test_a_bulk_request_through_the_gateway_creates_the_topic_and_is_served(
    gateway: Gateway, pool_worker: Worker, model: ModelRecord, fleet_settings: FleetSettings, names: Names
) -> None:
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": x.ravel().tolist()}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the first creates the topic, the second finds it
            async with session.post(
                f"{gateway.url}/v2/models/tiny/infer", json=body, headers={"X-Fleet-Lane": "bulk"}
            ) as response:
                answer = await response.json()
            assert response.status == 200, answer
            (out,) = answer["outputs"]
            np.testing.assert_allclose(np.array(out["data"]).reshape(2, 4), _reference(model, x), rtol=1e-5, atol=1e-6)
    bulk = names.bulk_topic("tiny")
    assert await topic_partitions(fleet_settings.kafka, [bulk]) == {bulk: PARTITIONS}


async def test_fleet_batch_run_on_a_model_without_a_bulk_topic(
    pool_worker: Worker, model: ModelRecord, fleet_settings: FleetSettings, names: Names, tmp_path: Path
) -> None:
    rows = np.random.default_rng(4).standard_normal((20, 16)).astype(np.float32)
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, rows)
    summary = await BatchRun(fleet_settings, BatchOptions("tiny", source, output, window=8)).run()
    assert (summary.done, summary.failed) == (20, 0)
    np.testing.assert_allclose(np.load(output), _reference(model, rows), rtol=1e-5, atol=1e-6)
    bulk = names.bulk_topic("tiny")
    assert await topic_partitions(fleet_settings.kafka, [bulk]) == {bulk: PARTITIONS}


async def test_a_per_model_worker_creates_its_bulk_topic_before_subscribing(
    fleet_settings: FleetSettings, model: ModelRecord, names: Names
) -> None:
    async with Worker(WorkerSettings(models=("tiny",), fleet=fleet_settings)) as worker:
        await worker.wait_ready(30)
    bulk = names.bulk_topic("tiny")
    assert await topic_partitions(fleet_settings.kafka, [bulk]) == {bulk: PARTITIONS}
