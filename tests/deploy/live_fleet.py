"""A real gateway, worker and autoscaler on the session's broker and Redis, and their /metrics texts:
what the promtool and dashboard checks read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from autoscaler import AutoscalerService, AutoscalerSettings
from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import free_port
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import BatchingConfig, FleetSettings, ModelRegistry, Names
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings

SERVICES = ("gateway", "worker", "autoscaler")


async def scrape_live_services(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> dict[str, str]:
    """Run a gateway, a worker and an autoscaler on the test's namespace, send one good and one bad infer
    request (so labelled series of both kinds carry samples), and return each service's /metrics text."""
    record = build_record(
        "tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"), batching=BatchingConfig(max_batch_size=8, max_queue_delay_ms=2)
    )
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, "tiny", partitions=1)
    worker_port, autoscaler_port = free_port(), free_port()
    worker_settings = WorkerSettings(
        models=("tiny",), fleet=fleet_settings, metrics_port=worker_port, device="cpu", drain_timeout_s=5
    )
    autoscaler_settings = AutoscalerSettings(
        interval_s=0.2, metrics_port=autoscaler_port, gpus=0, log_dir=str(tmp_path), pinned=("tiny=0",),
        fleet=fleet_settings,
    )  # fmt: skip
    gateway_settings = GatewaySettings(port=0, fleet=fleet_settings, default_timeout_s=20.0)
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.5] * 3}]}
    async with (
        Worker(worker_settings) as worker,
        Gateway(gateway_settings, names=names) as gateway,
        AutoscalerService(autoscaler_settings),
        aiohttp.ClientSession() as http,
    ):
        await worker.wait_ready(30)
        await gateway.wait_ready()
        # A success and a failure, so labelled series of both kinds carry samples.
        async with http.post(f"{gateway.url}/v2/models/tiny/infer", json=body) as response:
            assert response.status == 200, await response.text()
        async with http.post(f"{gateway.url}/v2/models/tiny/infer", json=bad) as response:
            assert response.status == 400, await response.text()
        urls = {
            "gateway": f"{gateway.url}/metrics",
            "worker": f"http://127.0.0.1:{worker_port}/metrics",
            "autoscaler": f"http://127.0.0.1:{autoscaler_port}/metrics",
        }
        out: dict[str, str] = {}
        for service, url in urls.items():
            async with http.get(url) as response:
                assert response.status == 200, url
                out[service] = await response.text()
    return out
