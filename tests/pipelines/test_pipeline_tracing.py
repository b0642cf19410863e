"""A pipeline request's trace: the gateway's SERVER span, then each step's worker spans in the same trace
(``python -m workers`` with tracing on, every span received by the OTLP receiver of tests/integration)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import Gateway, GatewaySettings
from schemas import FleetSettings, ModelRegistry, Names
from schemas.topics import ensure_model_topics
from tests.integration.conftest import WorkerProcess, wait_worker_ready
from tests.integration.test_tracing import Receiver, Span, receiver, traced  # noqa: F401  (fixtures)

from .test_pipeline_serving import THREE_STEPS, _records, apply

pytestmark = pytest.mark.integration

STEP_MODELS = {"standardize", "mlp", "softmax"}


async def _model_runs(collector: Receiver, trace_id: str, timeout_s: float = 30.0) -> list[Span]:
    """The trace's spans once it holds the gateway's span and a model run of every step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = collector.trace(trace_id)
        runs = {s.attributes.get("fleet.model") for s in spans if s.name == "fleet.worker.model_run"}
        if STEP_MODELS <= runs and any(s.service == "fleet-gateway" for s in spans):
            return spans
        await asyncio.sleep(0.05)
    raise AssertionError(f"trace {trace_id} incomplete: {collector.trace(trace_id)}")


async def test_a_pipeline_trace_holds_every_steps_worker_spans(
    traced: None,  # noqa: F811
    receiver: Receiver,  # noqa: F811
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    tmp_path: Path,
) -> None:
    records = await asyncio.to_thread(_records, tmp_path)
    registry = ModelRegistry(redis_client, names)
    for model in STEP_MODELS:
        await registry.register(records[model])
        await ensure_model_topics(fleet_settings.kafka, names, model)
    await apply(redis_client, names, THREE_STEPS)
    worker = WorkerProcess(
        fleet_settings,
        ",".join(sorted(STEP_MODELS)),
        tmp_path,
        FLEET_TRACING_OTLP_ENDPOINT=receiver.url,
        FLEET_TRACING_EXPORT_DELAY_MS="50",
        FLEET_WORKER_DEVICE="cpu",
    )
    trace_id, parent = "5bf92f3577b34da6a3ce929d0e0e4737", "00f067aa0ba902b8"
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    try:
        async with Gateway(GatewaySettings(fleet=fleet_settings, port=0, default_timeout_s=20)) as gateway:
            await asyncio.gather(gateway.wait_ready(), wait_worker_ready(redis_client, names, worker, 60))
            async with aiohttp.ClientSession() as session:
                url = f"{gateway.url}/v2/pipelines/classify/infer"
                headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
                async with session.post(url, json=body, headers=headers) as response:
                    assert response.status == 200, await response.text()
            spans = await _model_runs(receiver, trace_id)
    finally:
        worker.signal(15)
        await asyncio.to_thread(worker.wait, 30)
    (server,) = [s for s in spans if s.service == "fleet-gateway"]
    assert (server.name, server.parent_id) == ("POST /v2/pipelines/{model}/infer", parent)
    runs = [s for s in spans if s.name == "fleet.worker.model_run"]
    assert {s.attributes["fleet.model"] for s in runs} == STEP_MODELS
    assert {s.parent_id for s in runs} == {server.span_id}  # each step's spans are children of the request's
