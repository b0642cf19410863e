"""``python -m gateway`` as a real process: env settings, readiness, SIGTERM -> graceful exit."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from fleet.local.servers import free_port
from schemas import FleetSettings

ROOT = Path(__file__).resolve().parents[2]


async def _spawn(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_runs_until_sigterm(fleet_settings: FleetSettings) -> None:
    port = free_port()
    process = await _spawn(
        {
            "FLEET_GATEWAY_PORT": str(port),
            "FLEET_GATEWAY_GRPC_PORT": str(free_port()),  # not the default 8001: another process may hold it
            "FLEET_GATEWAY_ID": "main-test",
            "FLEET_NAMESPACE": fleet_settings.namespace,
            "FLEET_KAFKA_BOOTSTRAP": fleet_settings.kafka.bootstrap,
            "FLEET_REDIS_URL": fleet_settings.redis.url,
            "FLEET_LOG_FORMAT": "json",
        }
    )
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            while True:  # wait for the process to listen and be ready
                try:
                    async with http.get(f"http://127.0.0.1:{port}/v2/health/ready") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    log = stderr.decode()
    assert '"msg": "gateway started"' in log and '"gateway_id": "main-test"' in log
    assert '"msg": "gateway stopped"' in log


async def test_bad_log_format_exits_2() -> None:
    process = await _spawn({"FLEET_LOG_FORMAT": "xml"})
    async with asyncio.timeout(15):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert "FLEET_LOG_FORMAT must be one of text, json, not 'xml'" in stderr.decode()


async def test_bad_settings_exit_2() -> None:
    process = await _spawn({"FLEET_GATEWAY_PORTT": "1"})
    async with asyncio.timeout(15):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert "unknown setting" in stderr.decode()
