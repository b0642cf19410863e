"""FleetClient against a real in-process gateway (no workers: the paths that end at the gateway)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.client import FleetClient
from fleet.client.errors import ClientError, FleetHTTPError
from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import free_port
from fleet.models.artifacts import build_record
from schemas import ErrorCode, FleetSettings, ModelRegistry, Names
from schemas.topics import ensure_model_topics
from workers.heartbeat import Heartbeat

gateway = pytest.importorskip("gateway")
pytestmark = pytest.mark.integration


@pytest.fixture
async def client(
    fleet_settings: FleetSettings, redis_client: Any, names: Names, tmp_path: Path
) -> AsyncIterator[FleetClient]:
    """A client of an in-process gateway that knows model "tiny" (x: FP32[-1,16] -> y: FP32[-1,4])."""
    record = build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"))
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, "tiny", partitions=1)
    settings = gateway.GatewaySettings(port=0, fleet=fleet_settings, default_timeout_s=5.0)
    async with gateway.Gateway(settings) as gw, FleetClient(gw.url, timeout_s=5.0) as fleet_client:
        async with asyncio.timeout(10):
            while True:  # poll the readiness condition
                if await fleet_client.ready():
                    break
                await asyncio.sleep(0.02)
        yield fleet_client


async def test_metadata(client: FleetClient) -> None:
    server = await client.server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    model = await client.model_metadata("tiny")
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert (await client.model_metadata("tiny", "1"))["name"] == "tiny"


@pytest.mark.parametrize("binary", [True, False])
async def test_errors_carry_status_and_message(client: FleetClient, binary: bool) -> None:
    with pytest.raises(FleetHTTPError) as exc:
        await client.infer("nope", {"x": np.zeros((1, 16), np.float32)}, binary=binary)
    assert exc.value.status == 404 and exc.value.code is ErrorCode.MODEL_NOT_FOUND
    assert "unknown model 'nope'" in exc.value.message
    with pytest.raises(FleetHTTPError) as exc:
        await client.infer("tiny", {"x": np.zeros((1, 15), np.float32)}, binary=binary)
    assert exc.value.status == 400 and "[-1, 16]" in exc.value.message
    with pytest.raises(FleetHTTPError) as exc:
        await client.model_metadata("tiny", "9")
    assert exc.value.status == 404


async def test_the_gateway_deadline_follows_the_client_timeout(
    client: FleetClient, redis_client: Any, names: Names
) -> None:
    # A worker announces "tiny" but never answers: the gateway gives up at our deadline and says so (before our
    # own grace). Without any worker it would refuse at once (gateway.serviceability).
    await Heartbeat(redis_client, names, "silent", ["tiny"], 3600.0, list, lambda: "cpu").beat()
    with pytest.raises(FleetHTTPError) as exc:
        await client.infer("tiny", {"x": np.zeros((1, 16), np.float32)}, timeout_s=0.3)
    assert exc.value.status == 504 and exc.value.code is ErrorCode.DEADLINE_EXCEEDED


async def test_unreachable_gateway() -> None:
    async with FleetClient(f"http://127.0.0.1:{free_port()}", timeout_s=2.0) as client:
        assert await client.ready() is False
        with pytest.raises(ClientError) as exc:
            await client.infer("m", {"x": np.zeros(1, np.float32)})
    assert "cannot reach the gateway" in str(exc.value)
    assert not isinstance(exc.value, FleetHTTPError)
