"""LocalStack against the session's broker and Redis: gateway + a worker subprocess, the whole HTTP path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from autoscaler.placement_store import read_placement
from fleet.client import FleetClient
from fleet.client.stackfile import StackInfo, pid_alive
from fleet.demo.modelgen import tiny_mlp
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from fleet.models.verify import verify
from schemas import BatchingConfig, FleetSettings, ModelRegistry, Names
from schemas.topics import ensure_model_topics

from .procs_util import workers_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not workers_available(), reason="workers/ is not there yet"),
]


async def test_stack_serves_registered_models_and_stops_clean(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    path = tiny_mlp(tmp_path / "tiny.onnx")
    record = build_record("tiny", "1", path, batching=BatchingConfig(16, 2.0))
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, "tiny", partitions=2)
    kafka = fleet_settings.kafka
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(
        FLEET_KAFKA_SESSION_TIMEOUT_MS=str(kafka.session_timeout_ms),
        FLEET_KAFKA_HEARTBEAT_INTERVAL_MS=str(kafka.heartbeat_interval_ms),
    )
    config = StackConfig(
        home=tmp_path / "home",
        namespace=names.namespace,
        kafka=kafka.bootstrap,
        redis=fleet_settings.redis.url,
        env=env,
    )
    stack = LocalStack(config)
    async with stack:
        assert stack.models == ["tiny"]  # the registered models, since none were named
        info = StackInfo.read(config.home)
        assert info is not None and info.gateway_url == stack.url
        assert sorted(p.role for p in info.processes) == ["gateway", "worker"]
        x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
        (expected,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        async with FleetClient(stack.url, timeout_s=10) as client:
            report = await verify(client, record)
            assert report.ok, report.line()
            for binary in (True, False):
                result = await client.infer("tiny", {"x": x}, binary=binary)
                assert result.model_version == "1" and result.id
                np.testing.assert_allclose(result["y"], expected, rtol=1e-5, atol=1e-6)

            old = {p.pid for p in info.processes if p.role == "worker"}
            assert await stack.restart_workers() == ["tiny"]
            restarted = StackInfo.read(config.home)
            assert restarted is not None and restarted.generation == info.generation + 1
            assert not any(pid_alive(pid) for pid in old)
            assert (await verify(client, record)).ok
        children = [p.pid for p in restarted.processes]
    assert not [pid for pid in children if pid_alive(pid)]
    assert StackInfo.read(config.home) is None
    await stack.stop()  # idempotent


async def test_placement_stack_places_every_model_on_following_workers(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    registry = ModelRegistry(redis_client, names)
    for i, model in enumerate(("pa", "pb", "pc")):
        await registry.register(build_record(model, "1", tiny_mlp(tmp_path / f"{model}.onnx", seed=i)))
        await ensure_model_topics(fleet_settings.kafka, names, model)
    kafka = fleet_settings.kafka
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(
        FLEET_KAFKA_SESSION_TIMEOUT_MS=str(kafka.session_timeout_ms),
        FLEET_KAFKA_HEARTBEAT_INTERVAL_MS=str(kafka.heartbeat_interval_ms),
        FLEET_AUTOSCALER_INTERVAL_S="0.2",
        FLEET_WORKER_HEARTBEAT_INTERVAL_S="0.3",
        FLEET_WORKER_CACHE_DIR=str(tmp_path / "cache"),
    )
    config = StackConfig(
        home=tmp_path / "home",
        namespace=names.namespace,
        kafka=kafka.bootstrap,
        redis=fleet_settings.redis.url,
        workers=2,
        placement=True,
        env=env,
    )
    x = np.ones((1, 16), dtype=np.float32)
    async with LocalStack(config) as stack, FleetClient(stack.url, timeout_s=20) as client:
        info = StackInfo.read(config.home)
        assert info is not None and info.autoscale  # models registered later are found without a reload
        assert sorted(p.role for p in info.processes) == ["autoscaler", "gateway", "worker", "worker"]
        workers = {p.name for p in info.processes if p.role == "worker"}
        placements = await read_placement(redis_client, names, ["pa", "pb", "pc"])
        for model in ("pa", "pb", "pc"):
            assert placements[model]["state"] == "placed", placements[model]
            assert placements[model]["workers"] in workers  # one replica each, on a stack worker
            assert (await client.infer(model, {"x": x}))["y"].shape == (1, 4)
        # A model registered later is placed and served by the running workers, no restart.
        await registry.register(build_record("pd", "1", tiny_mlp(tmp_path / "pd.onnx", seed=9)))
        await ensure_model_topics(kafka, names, "pd")
        assert await stack.restart_workers() == ["pa", "pb", "pc", "pd"]  # waits until it is placed
        assert (await client.infer("pd", {"x": x}))["y"].shape == (1, 4)
        assert sorted(p.name for p in stack.info().processes if p.role == "worker") == sorted(workers)
