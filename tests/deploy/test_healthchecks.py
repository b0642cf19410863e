"""The images' HEALTHCHECK commands, taken from the Dockerfiles, pass against a real gateway and worker and
fail when nothing listens."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import free_port
from fleet.models.artifacts import build_record
from gateway import Gateway, GatewaySettings
from schemas import FleetSettings, ModelRegistry, Names
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings

from .manifests import DEPLOY
from .test_dockerfiles import instructions

pytestmark = pytest.mark.integration


def healthcheck(dockerfile: str) -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK, with the image's python replaced by ours."""
    (args,) = [a for word, a in instructions(DEPLOY / "docker" / dockerfile) if word == "HEALTHCHECK"]
    command: list[str] = json.loads(args[args.index("CMD ") + 4 :])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


async def run(command: list[str], **env: str) -> int:
    process = await asyncio.create_subprocess_exec(
        *command, env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), 30)


async def test_gateway_healthcheck(fleet_settings: FleetSettings, names: Names) -> None:
    command = healthcheck("gateway.Dockerfile")
    async with Gateway(GatewaySettings(port=0, fleet=fleet_settings), names=names) as gateway:
        port = str(urlsplit(gateway.url).port)
        # Like Docker (start period, retries): the gateway is ready once its backends answer, which a busy
        # session's broker may take a few seconds to do; the check must pass by then.
        for _ in range(40):
            if await run(command, FLEET_GATEWAY_PORT=port) == 0:
                break
            await asyncio.sleep(0.5)
        else:
            pytest.fail("the gateway's healthcheck did not pass within 20 s of its start")
    assert await run(command, FLEET_GATEWAY_PORT=port) != 0


async def test_worker_healthchecks(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    commands = [healthcheck("worker-cpu.Dockerfile"), healthcheck("worker-cuda.Dockerfile")]
    await ModelRegistry(redis_client, names).register(build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx")))
    await ensure_model_topics(fleet_settings.kafka, names, "tiny", partitions=1)
    port = free_port()
    settings = WorkerSettings(models=("tiny",), fleet=fleet_settings, metrics_port=port, device="cpu")
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        for command in commands:
            assert await run(command, FLEET_WORKER_METRICS_PORT=str(port)) == 0
    for command in commands:
        assert await run(command, FLEET_WORKER_METRICS_PORT=str(port)) != 0
