"""Every framework beyond ONNX through the whole path (gateway, Kafka, worker, Redis), answers compared with the
same model run in-process: scikit-learn (skops), XGBoost (JSON and UBJ), LightGBM, torch safetensors + factory,
torch.export, Python classes (batching, and one that cannot batch); a Python model's transient failures retried
and its permanent one answered at once; a Python model evicted (unload called) and reloaded.

One stack (gateway + one worker serving every model) for the module: the models are tiny, the stack is not.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.client import FleetClient
from fleet.client.errors import FleetHTTPError
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import (
    FleetSettings,
    Framework,
    KafkaSettings,
    ModelRecord,
    ModelRegistry,
    Names,
    RedisSettings,
)
from schemas.topics import ensure_model_topics
from tests import anymodels
from workers import Worker, WorkerSettings
from workers.residency import MB

pytestmark = pytest.mark.integration

X = anymodels.rows(7, seed=3)  # 7 rows: several requests share a batch of a batching model


@dataclass
class Stack:
    """The module's gateway URL, its models' records and the same models in-process."""

    url: str
    settings: FleetSettings
    names: Names
    records: dict[str, ModelRecord]
    local: dict[str, Any]
    worker: Worker


def _settings(kafka_bootstrap: str, redis_url: str, names: Names) -> FleetSettings:
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap,
        fetch_max_wait_ms=10,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        request_timeout_ms=3000,
        partitions=1,
    )
    return FleetSettings(namespace=names.namespace, kafka=kafka, redis=RedisSettings(url=redis_url))


def _records(directory: Path) -> tuple[dict[str, ModelRecord], dict[str, Any]]:
    """Each model built, saved and registered as `fleet models register` would (framework and signature inferred
    where the artifact says them), and the in-process objects to compare with."""
    sk_path, sk = anymodels.sklearn_model(directory / "clf.skops")
    xj_path, xj = anymodels.xgboost_model(directory / "xgb.json")
    xu_path, xu = anymodels.xgboost_model(directory / "xgb.ubj")
    lg_path, lg = anymodels.lightgbm_model(directory / "lgb.txt")
    weights, exported, module = anymodels.torch_models(directory)
    python = {"framework": Framework.PYTHON}
    built = {
        "sk": build_record("sk", "1", sk_path, load=True),
        "xj": build_record("xj", "1", xj_path, load=True),
        "xu": build_record("xu", "1", xu_path, load=True),
        "lg": build_record("lg", "1", lg_path, load=True),
        "st": build_record(
            "st", "1", weights, factory="tests.anymodels:affine", load=True, inputs=(anymodels.spec("x:FP32:-1,4"),),
            outputs=(anymodels.spec("a:FP32:-1,3"), anymodels.spec("s:FP32:-1,1")),
        ),
        "ex": build_record("ex", "1", exported, load=True),
        "py": build_record(
            "py", "1", anymodels.npy(directory / "k.npy", np.float32(3)), factory="tests.anymodels:Scale", load=True,
            **python,
        ),
        "shout": build_record(
            "shout", "1", anymodels.npy(directory / "s.npy", 0), factory="tests.anymodels:Shout", load=True, **python
        ),
        # Not loaded at registration (its dummy batch would fail transiently): the specs are given instead.
        "flaky": build_record(
            "flaky", "1", anymodels.npy(directory / "f.npy", 2), factory="tests.anymodels:Flaky", **python,
            inputs=(anymodels.spec("x:FP32:-1,4"),), outputs=(anymodels.spec("y:FP32:-1,4"),),
        ),
    }  # fmt: skip
    return built, {"sk": sk, "xj": xj, "xu": xu, "lg": lg, "torch": module}


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    names = Names(f"t-anymodels-{uuid.uuid4().hex[:8]}")
    settings = _settings(kafka_bootstrap, redis_url, names)
    directory = tmp_path_factory.mktemp("anymodels")
    records, local = await asyncio.to_thread(_records, directory)
    redis = settings.redis.client()
    registry = ModelRegistry(redis, names)
    for record in records.values():
        await registry.register(record)
        await ensure_model_topics(settings.kafka, names, record.name)
    worker_settings = WorkerSettings(
        models=tuple(records), fleet=settings, cache_dir=str(directory / "cache"), retry_base_ms=20, retry_max_ms=50
    )
    try:
        async with Gateway(GatewaySettings(fleet=settings, port=0, default_timeout_s=20.0)) as gateway:
            await gateway.wait_ready()
            async with Worker(worker_settings) as worker:
                await worker.wait_ready(60)
                yield Stack(gateway.url, settings, names, records, local, worker)
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()


async def _infer(stack: Stack, model: str, inputs: dict[str, Any], rows_per_request: int = 2) -> dict[str, Any]:
    """``inputs`` sent as concurrent requests of ``rows_per_request`` rows (so that they batch), answers joined."""
    async with FleetClient(stack.url, timeout_s=20) as client:
        count = len(next(iter(inputs.values())))
        parts = [
            {name: array[start : start + rows_per_request] for name, array in inputs.items()}
            for start in range(0, count, rows_per_request)
        ]
        answers = await asyncio.gather(*(client.infer(model, part) for part in parts))
    return {name: np.concatenate([a.outputs[name] for a in answers]) for name in answers[0].outputs}


@pytest.mark.parametrize("model", ["sk", "xj", "xu", "lg"])
async def test_a_tabular_model_answers_as_it_does_in_process(stack: Stack, model: str) -> None:
    local = stack.local[model]
    answer = await _infer(stack, model, {"features": X})
    assert answer["label"].tolist() == local.predict(X).tolist()
    assert np.allclose(answer["probabilities"], local.predict_proba(X), atol=1e-6)


async def test_torch_safetensors_and_export_answer_as_the_module_does(stack: Stack) -> None:
    import torch

    with torch.inference_mode():
        a, s = (t.numpy() for t in stack.local["torch"](torch.from_numpy(X)))
    weights = await _infer(stack, "st", {"x": X})
    assert np.allclose(weights["a"], a, atol=1e-6) and np.allclose(weights["s"], s, atol=1e-6)
    exported = await _infer(stack, "ex", {"x": X})
    assert stack.records["ex"].framework is Framework.TORCH_EXPORT
    assert np.allclose(exported["output_0"], a, atol=1e-6) and np.allclose(exported["output_1"], s, atol=1e-6)


async def test_python_models_batching_and_one_request_at_a_time(stack: Stack) -> None:
    scaled = await _infer(stack, "py", {"x": X})
    assert np.allclose(scaled["y"], X * 3)
    assert stack.records["shout"].batching.max_batch_size == 1  # the class says batchable = False
    words = np.array([b"abc", "été".encode(), b"x"], dtype=object)
    shouted = await _infer(stack, "shout", {"text": words}, rows_per_request=1)
    assert shouted["upper"].tolist() == [b"ABC", "ÉTÉ".encode(), b"X"]
    assert shouted["length"].tolist() == [3, 3, 1]


async def test_a_python_models_transient_errors_are_retried_and_its_permanent_one_is_not(stack: Stack) -> None:
    async with FleetClient(stack.url, timeout_s=20) as client:
        # Two transient failures (the artifact says 2), retried: the third try answers.
        answer = await client.infer("flaky", {"x": X[:2] * 0 + 1})
        assert answer.outputs["y"].tolist() == np.ones((2, 4)).tolist()
        with pytest.raises(FleetHTTPError) as refused:
            await client.infer("flaky", {"x": -np.ones((1, 4), np.float32)})
    assert refused.value.status == 500 and refused.value.code.value == "MODEL_ERROR"
    assert "PermanentModelError: negative features are not allowed" in refused.value.message
    labels = {"model": "flaky", "version": "1"}
    retries = stack.worker.metrics.registry.get_sample_value("fleet_worker_request_retries_total", labels)
    assert retries == 2  # the two transient failures; the permanent one was answered at once


async def test_a_python_model_is_unloaded_when_evicted_and_reloaded(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, gateway: Gateway
) -> None:
    registry = ModelRegistry(redis_client, names)
    records = []
    for name, k in (("pa", 2), ("pb", 5)):
        # 100 KB artifacts (k repeated): the budget below holds one model at a time.
        artifact = anymodels.npy(tmp_path / f"{name}.npy", np.full(25_000, k, np.float32))
        record = build_record(name, "1", artifact, framework=Framework.PYTHON, factory="tests.anymodels:Scale",
                              inputs=(anymodels.spec("x:FP32:-1,25000"),), outputs=(anymodels.spec("y:FP32:-1,25000"),))
        await registry.register(record)
        await ensure_model_topics(fleet_settings.kafka, names, name)
        records.append(record)
    size = records[0].size_bytes * 3  # size_factor
    settings = WorkerSettings(
        models=("pa", "pb"), fleet=fleet_settings, cache_dir=str(tmp_path / "cache"), memory_budget_mb=1.5 * size / MB,
        overcommit_pct=100, measure_footprint=False, preload=False,
    )  # fmt: skip
    anymodels.Scale.constructed.clear()
    anymodels.Scale.unloaded.clear()
    x = np.ones((1, 25_000), np.float32)
    async with Worker(settings) as worker, FleetClient(gateway.url, timeout_s=20) as client:
        await worker.wait_ready(30)
        for model, k in (("pa", 2), ("pb", 5), ("pa", 2)):
            answer = await client.infer(model, {"x": x})
            assert answer.outputs["y"][0, 0] == k
    constructed = [Path(p).name for p in anymodels.Scale.constructed]
    unloaded = [Path(p).name for p in anymodels.Scale.unloaded]
    pa, pb = (f"{r.sha256}.npy" for r in records)
    assert constructed == [pa, pb, pa]  # pa loaded, evicted for pb, loaded again
    assert unloaded[:2] == [pa, pb]  # unload() on each eviction (then pa at the worker's stop)
