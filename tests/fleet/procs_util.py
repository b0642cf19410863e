"""Helpers shared by the process-level tests: condition polling and finding a stack's descendants."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path

from fleet.client.stackfile import pid_alive


def workers_available() -> bool:
    """True once ``python -m workers`` exists."""
    return importlib.util.find_spec("workers.__main__") is not None


def clean_env(home: Path) -> dict[str, str]:
    """The environment without any fleet address, so a stack starts its own broker and Redis."""
    drop = ("FLEET_", "KAFKA_BOOTSTRAP", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["FLEET_HOME"] = str(home)
    return env


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def processes_with_env(entry: str) -> list[int]:
    """Live pids whose environment holds ``entry`` (e.g. ``FLEET_HOME=/tmp/x``): a stack's descendants."""
    found = []
    needle = entry.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found
