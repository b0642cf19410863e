"""LocalStack against the session's broker and Redis: gateway + a worker subprocess, the whole HTTP path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from fleet.artifacts import build_record
from fleet.client import FleetClient
from fleet.modelgen import tiny_mlp
from fleet.stack import LocalStack, StackConfig
from fleet.stackfile import StackInfo, pid_alive
from fleet.verify import verify
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
