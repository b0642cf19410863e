"""Helpers of the tests that drive ``fleet`` commands through ``main`` against the session's servers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleet.cli import main
from fleet.local.servers import free_port
from schemas import FleetSettings


def connection_args(fleet_settings: FleetSettings, home: Path, *, no_gateway: bool = False) -> list[str]:
    """Flags naming the test's broker, Redis, namespace and home; ``no_gateway``: a gateway URL nothing serves."""
    args = [
        "--kafka", fleet_settings.kafka.bootstrap, "--redis", fleet_settings.redis.url,
        "--namespace", fleet_settings.namespace, "--home", str(home),
    ]  # fmt: skip
    if no_gateway:
        args += ["--url", f"http://127.0.0.1:{free_port()}"]
    return args


async def run_fleet(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``fleet argv`` in a thread (it runs its own event loop): exit status, stdout, stderr."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err
