"""Where commands find the fleet: flag, then env, then a running stack's stack.json, then defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.client.connection import DEFAULT_URL, resolve
from fleet.client.stackfile import ProcessInfo, StackInfo, pid_alive


def running_stack(home: Path) -> StackInfo:
    info = StackInfo(
        pid=os.getpid(),
        namespace="stackns",
        gateway_url="http://127.0.0.1:9999",
        kafka_bootstrap="127.0.0.1:19092",
        redis_url="redis://127.0.0.1:16379/0",
        home=str(home),
        started_ms=0.0,
        processes=[ProcessInfo("gateway", "gateway", 1, "/log")],
    )
    info.write(home)
    return info


def test_defaults_without_anything(tmp_path: Path) -> None:
    target = resolve({}, home=str(tmp_path))
    assert target.url == DEFAULT_URL
    assert target.settings.namespace == "fleet"
    assert target.stack is None


def test_stack_file_then_env_then_flags(tmp_path: Path) -> None:
    running_stack(tmp_path)
    target = resolve({}, home=str(tmp_path))
    assert (target.url, target.settings.kafka.bootstrap, target.settings.redis.url, target.settings.namespace) == (
        "http://127.0.0.1:9999", "127.0.0.1:19092", "redis://127.0.0.1:16379/0", "stackns",
    )  # fmt: skip
    env = {"REDIS_URL": "redis://env:1/0", "FLEET_NAMESPACE": "envns", "FLEET_URL": "http://env:1"}
    target = resolve(env, home=str(tmp_path))
    assert (target.url, target.settings.redis.url, target.settings.namespace) == (
        "http://env:1",
        "redis://env:1/0",
        "envns",
    )
    target = resolve(env, home=str(tmp_path), redis="redis://flag:2/0", namespace="flagns", url="http://flag:2")
    assert (target.url, target.settings.redis.url, target.settings.namespace) == (
        "http://flag:2",
        "redis://flag:2/0",
        "flagns",
    )


def test_stale_stack_file_is_ignored(tmp_path: Path) -> None:
    info = running_stack(tmp_path)
    info.pid = 2**22 + 12345  # above the default pid_max: never a live process
    info.write(tmp_path)
    assert not pid_alive(info.pid)
    assert resolve({}, home=str(tmp_path)).stack is None
    assert StackInfo.read(tmp_path) == info


def test_fleet_home_from_env(tmp_path: Path) -> None:
    assert resolve({"FLEET_HOME": str(tmp_path / "h")}).home == tmp_path / "h"


def test_bad_namespace_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        resolve({}, home=str(tmp_path), namespace="bad name")
