"""Pipelines through worker processes: a middle step with no worker is scaled from zero by the autoscaler, and a
middle step's worker SIGKILLed under load loses no request and answers none twice.

The first and last steps run in an in-process worker; the middle step (the ONNX MLP) in ``python -m workers``
processes, which the autoscaler's local backend starts (scale from zero) or the test starts and kills.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from autoscaler import Autoscaler, AutoscalerSettings, LagCollector, LocalProcessBackend, PinStore, ServiceStatsReader
from fleet.client import FleetClient
from gateway import Gateway, GatewaySettings
from schemas import FleetSettings, InferenceResponse, ModelRecord, ModelRegistry, Names
from schemas.topics import ensure_model_topics
from tests.integration.conftest import WorkerProcess, wait_worker_ready
from tests.pipelinemodels import Softmax, Standardize
from workers import Worker, WorkerSettings

from .test_pipeline_serving import THREE_STEPS, _records, apply

pytestmark = pytest.mark.integration


class Fleet:
    """A gateway and an in-process worker serving the pipeline's first and last steps (not its middle one)."""

    def __init__(self, gateway: Gateway, records: dict[str, ModelRecord]) -> None:
        self.gateway = gateway
        self.records = records
        self.mlp = ort.InferenceSession(records["mlp"].artifact, providers=["CPUExecutionProvider"])

    def expected(self, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        """What the three steps answer run here."""
        (logits,) = self.mlp.run(None, {"x": Standardize("", "cpu").predict({"features": x})["x"]})
        return Softmax("", "cpu").predict({"logits": logits})["probs"]


@pytest.fixture
async def fleet(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> AsyncIterator[Fleet]:
    records = await asyncio.to_thread(_records, tmp_path)
    registry = ModelRegistry(redis_client, names)
    for model in ("standardize", "mlp", "softmax"):
        await registry.register(records[model])
        await ensure_model_topics(fleet_settings.kafka, names, model)
    await apply(redis_client, names, THREE_STEPS)
    ends = WorkerSettings(models=("standardize", "softmax"), fleet=fleet_settings, cache_dir=str(tmp_path / "cache"))
    async with Gateway(GatewaySettings(fleet=fleet_settings, port=0, default_timeout_s=60.0)) as gateway:
        await gateway.wait_ready()
        async with Worker(ends) as worker:
            await worker.wait_ready(60)
            yield Fleet(gateway, records)


async def test_a_middle_step_with_no_worker_is_scaled_from_zero_and_answers(
    fleet: Fleet, fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    backend = LocalProcessBackend(
        fleet_settings,
        log_dir=tmp_path / "workers",
        extra_env={"FLEET_WORKER_DEVICE": "cpu", "FLEET_WORKER_DRAIN_TIMEOUT_S": "10"},
        gpu_count=0,
        drain_timeout_s=20.0,
    )
    settings = AutoscalerSettings(
        models=("mlp",),
        interval_s=0.2,
        target_drain_s=5.0,
        max_replicas=1,
        scale_down_stabilization_s=60.0,
        idle_to_zero_s=600.0,
        fleet=fleet_settings,
    )
    x = np.random.default_rng(11).standard_normal((3, 16)).astype(np.float32)
    try:
        assert await backend.replicas("mlp") == 0
        async with LagCollector(fleet_settings, half_life_s=1.0) as collector:
            stats = ServiceStatsReader(redis_client, names)
            async with Autoscaler(settings, backend, collector, stats, pins=PinStore(redis_client, names)) as scaler:
                async with FleetClient(fleet.gateway.url, timeout_s=90) as client:
                    result = await client.infer("classify", {"features": x}, pipeline=True, timeout_s=90)
                first = scaler.decisions["mlp"]
    finally:
        await backend.stop()
    np.testing.assert_allclose(result.outputs["probs"], fleet.expected(x), rtol=1e-5, atol=1e-6)
    assert [e.worker_id for e in backend.exits], "the middle step's worker was started by the autoscaler"
    assert first.desired >= 1


async def test_a_middle_step_worker_killed_under_load_loses_and_doubles_no_answer(
    fleet: Fleet, fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    count = 120
    first = WorkerProcess(fleet_settings, "mlp", tmp_path, FLEET_WORKER_DEVICE="cpu")
    second: WorkerProcess | None = None
    stream = names.reply_stream(fleet.gateway.settings.gateway_id)

    async def answered() -> Counter[str]:
        entries = await redis_client.xrange(stream)
        return Counter(InferenceResponse.from_bytes(fields[b"r"]).id for _, fields in entries)

    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(count)]
    gate = asyncio.Semaphore(16)
    try:
        await wait_worker_ready(redis_client, names, first, 60)
        async with FleetClient(fleet.gateway.url, timeout_s=90) as client:

            done: list[int] = []
            underway = asyncio.Event()

            async def one(i: int) -> Any:
                async with gate:
                    result = await client.infer("classify", {"features": inputs[i]}, pipeline=True)
                done.append(i)
                if len(done) >= count // 6:
                    underway.set()
                return result

            load = asyncio.gather(*(one(i) for i in range(count)))
            await asyncio.wait_for(underway.wait(), 60)
            first.signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 10)
            assert len(await answered()) < count  # killed in the middle of the load
            second = WorkerProcess(fleet_settings, "mlp", tmp_path, FLEET_WORKER_DEVICE="cpu")
            await wait_worker_ready(redis_client, names, second, 60)
            results = await asyncio.wait_for(load, 120)
    finally:
        for process in (first, second):
            if process is not None and process.process.poll() is None:
                process.signal(signal.SIGTERM)
                await asyncio.to_thread(process.wait, 30)
    assert len(results) == count
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_allclose(result.outputs["probs"], fleet.expected(x), rtol=1e-5, atol=1e-6)
    # Every answer that reached the gateway: one per request, although the killed worker's records ran again.
    counts = await answered()
    assert len(counts) == count and set(counts.values()) == {1}, counts.most_common(3)


async def test_a_pipeline_job_reads_running_once_its_first_step_is_taken(fleet: Fleet) -> None:
    """The first step runs; the middle one has no worker: the job is running, not pending."""
    x = np.ones((1, 16), dtype=np.float32)
    async with FleetClient(fleet.gateway.url, timeout_s=10) as client:
        job_id = await client.submit("classify", {"features": x}, pipeline=True)
        statuses = [(await client.job(job_id)).status.value]
        for _ in range(200):
            if statuses[-1] != "pending":
                break
            await asyncio.sleep(0.05)
            statuses.append((await client.job(job_id)).status.value)
        job = await client.job(job_id)
    assert statuses[-1] == "running" and job.status.value == "running", statuses[-3:]
