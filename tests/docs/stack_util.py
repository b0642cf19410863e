"""A real `fleet up` stack in a scratch directory, driven the way a user drives it from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fleet.client.stackfile import StackInfo

from .markdown_blocks import ROOT

BIN = Path(sys.executable).parent  # the environment's `python` and `fleet`


def user_env(home: Path) -> dict[str, str]:
    """A user's shell: this environment's `python` and `fleet` first on PATH, no fleet address, FLEET_HOME."""
    drop = ("FLEET_", "KAFKA_BOOTSTRAP", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLEET_HOME"] = str(home)
    return env


def workdir(tmp: Path) -> Path:
    """A scratch directory that looks like the repository root to the examples (examples/ linked in)."""
    (tmp / "examples").symlink_to(ROOT / "examples")
    return tmp


def start_stack(
    command: str, cwd: Path, env: dict[str, str], timeout_s: float = 60
) -> tuple[subprocess.Popen[str], str]:
    """Run ``command`` (a `fleet up` line) on a free port; wait for its stack file; the process and gateway URL."""
    assert command.split()[:2] == ["fleet", "up"], command
    up = subprocess.Popen(
        [*command.split(), "--port", "0"], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    home = Path(env["FLEET_HOME"])
    deadline = time.monotonic() + timeout_s
    while (info := StackInfo.read(home)) is None:
        if up.poll() is not None or time.monotonic() > deadline:
            stop(up, env, cwd)
            raise AssertionError(f"`{command}` did not start:\n{up.communicate()[0]}")
        time.sleep(0.05)
    return up, info.gateway_url


def run_shell(script: str, cwd: Path, env: dict[str, str], timeout_s: float = 90) -> str:
    """Run ``script`` with bash -euo pipefail; its output, or an AssertionError that shows it."""
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, text=True, timeout=timeout_s,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}:\n{script}\n---\n{done.stdout}"
    return done.stdout


def stop(up: subprocess.Popen[str], env: dict[str, str], cwd: Path) -> None:
    """`fleet down` (idempotent); kill the owner if it is still there."""
    if up.poll() is None:
        subprocess.run(["fleet", "down"], cwd=cwd, env=env, capture_output=True, timeout=90, check=False)
    try:
        up.wait(60)
    except subprocess.TimeoutExpired:
        up.kill()
        up.wait()
