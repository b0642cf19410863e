"""CLI plumbing: a busy gateway port, a closed stdout, and finding the local stack from anywhere."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.client.stackfile import StackInfo, fleet_home
from schemas import Names
from schemas.apikeys import ApiKeyStore

from .procs_util import clean_env

FLEET = [sys.executable, "-m", "fleet.cli"]


def test_up_on_a_busy_port_says_which_and_starts_nothing(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = subprocess.run(
            [*FLEET, "up", "--port", str(port)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is busy" in result.stderr
    assert "ready" not in result.stdout
    assert StackInfo.read(tmp_path) is None and not (tmp_path / "logs").exists()


def run_into_closed_pipe(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run ``fleet argv`` with a stdout whose reader is already gone (what `| head -1` leaves)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*FLEET, *argv], env=env, stdout=write_end, stderr=subprocess.PIPE, timeout=60, check=False
        )
    finally:
        os.close(write_end)


def test_config_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    result = run_into_closed_pipe(["config"], clean_env(tmp_path))
    assert result.stderr == b""
    assert result.returncode == 141  # 128 + SIGPIPE, as a unix tool killed by SIGPIPE


@pytest.mark.integration
async def test_keys_create_into_a_closed_pipe_creates_the_key_and_exits_quietly(
    tmp_path: Path, redis_url: str, names: Names, redis_client: object
) -> None:
    env = {**clean_env(tmp_path), "FLEET_REDIS_URL": redis_url, "FLEET_NAMESPACE": names.namespace}
    result = run_into_closed_pipe(["keys", "create", "ci"], env)
    assert result.stderr == b"" and result.returncode == 141
    assert [k.name for k in await ApiKeyStore(redis_client, names).list()] == ["ci"]  # the work was done


def test_the_stack_is_found_from_a_subdirectory_like_git_finds_its_repo(tmp_path: Path) -> None:
    home = tmp_path / ".fleet"
    home.mkdir()
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert fleet_home({}, cwd=deep) == home
    assert fleet_home({}, cwd=tmp_path) == home
    assert fleet_home({"FLEET_HOME": str(tmp_path / "x")}, cwd=deep) == tmp_path / "x"  # FLEET_HOME wins
    assert fleet_home({"FLEET_HOME": str(tmp_path / "x")}, "/h", cwd=deep) == Path("/h")  # then --home


def test_a_running_stack_answers_commands_run_in_a_subdirectory(tmp_path: Path) -> None:
    running = StackInfo(
        pid=os.getpid(), namespace="subns", gateway_url="http://127.0.0.1:9", kafka_bootstrap="127.0.0.1:9",
        redis_url="redis://127.0.0.1:9/0", home=str(tmp_path / ".fleet"), started_ms=0.0,
    )  # fmt: skip
    running.write(tmp_path / ".fleet")
    deep = tmp_path / "src" / "pkg"
    deep.mkdir(parents=True)
    env = {k: v for k, v in clean_env(tmp_path).items() if k != "FLEET_HOME"}
    code = "from fleet.client.connection import resolve; import os; t = resolve(os.environ); print(t.home, t.url)"
    out = subprocess.run([sys.executable, "-c", code], cwd=deep, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(tmp_path / ".fleet"), "http://127.0.0.1:9"]


def test_no_stack_and_no_address_is_one_line_naming_where_it_looked(tmp_path: Path) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6379)) == 0:
            pytest.skip("a Redis server answers at the default address on this machine")
    env = {k: v for k, v in clean_env(tmp_path).items() if k != "FLEET_HOME"}
    result = subprocess.run(
        [*FLEET, "models", "list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fleet: error: no fleet found: no running local stack (.fleet in {tmp_path} ")
    assert "no address given" in lines[0] and "6379" in lines[0]
