"""The pure parts of the local backend: worker environments and GPU assignment."""

from __future__ import annotations

import pytest

from autoscaler.__main__ import inherited_worker_env
from autoscaler.backends import pick_gpu, settings_env, worker_env
from schemas import FleetSettings, KafkaSettings, RedisSettings
from workers.settings import WorkerSettings

FLEET = FleetSettings(
    namespace="ns1",
    kafka=KafkaSettings(bootstrap="k1:9092,k2:9092", fetch_max_wait_ms=7, session_timeout_ms=2000, partitions=3),
    redis=RedisSettings(url="redis://r:6380/2", socket_timeout_s=1.5),
)


@pytest.mark.parametrize(
    ("assigned", "count", "expected"),
    [
        ([], 0, None),
        ([None], 0, None),
        ([], 2, 0),
        ([0], 2, 1),
        ([0, 1], 2, 0),
        ([0, 1, 0], 2, 1),
        ([1], 2, 0),  # the gap left by a stopped worker is refilled first
        ([0, 0, 1], 3, 2),
        ([None, 7], 2, 0),  # unknown assignments do not count
    ],
)
def test_pick_gpu(assigned: list[int | None], count: int, expected: int | None) -> None:
    assert pick_gpu(assigned, count) == expected


def test_round_robin_over_two_gpus_sets_cuda_visible_devices() -> None:
    assigned: list[int | None] = []
    envs = []
    for i in range(5):
        gpu = pick_gpu(assigned, 2)
        assigned.append(gpu)
        envs.append(worker_env(FLEET, "m", f"w{i}", gpu=gpu))
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1", "0"]


def test_no_gpu_leaves_cuda_visible_devices_alone() -> None:
    env = worker_env(FLEET, "m", "w1", base={"CUDA_VISIBLE_DEVICES": "3"})
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(FLEET, "m", "w1")


def test_worker_env_layers() -> None:
    base = {
        "PATH": "/bin",
        "FLEET_AUTOSCALER_MODELS": "x",
        "FLEET_WORKER_MODELS": "stale",
        "FLEET_KAFKA_BOOTSTRAP": "old",
    }
    extra = {"FLEET_WORKER_DEVICE": "cpu", "FLEET_WORKER_ID": "not-this", "CUDA_VISIBLE_DEVICES": "9"}
    env = worker_env(FLEET, "m", "w1", gpu=1, base=base, extra=extra)
    assert env["PATH"] == "/bin" and "FLEET_AUTOSCALER_MODELS" not in env
    assert (env["FLEET_WORKER_MODELS"], env["FLEET_WORKER_ID"], env["FLEET_WORKER_DEVICE"]) == ("m", "w1", "cpu")
    assert env["FLEET_KAFKA_BOOTSTRAP"] == "k1:9092,k2:9092" and env["CUDA_VISIBLE_DEVICES"] == "1"


def test_worker_reads_back_the_same_fleet_settings() -> None:
    """Every shared setting survives the trip through the environment (what the worker process parses)."""
    settings = WorkerSettings.from_env(worker_env(FLEET, "m", "w1", extra={"FLEET_WORKER_DEVICE": "cpu"}))
    assert settings.fleet == FLEET
    assert (settings.models, settings.worker_id, settings.device) == (("m",), "w1", "cpu")


def test_settings_env_names() -> None:
    env = settings_env(FLEET)
    assert env["FLEET_NAMESPACE"] == "ns1" and env["FLEET_REDIS_URL"] == "redis://r:6380/2"
    assert env["FLEET_KAFKA_SESSION_TIMEOUT_MS"] == "2000" and env["FLEET_REDIS_SOCKET_TIMEOUT_S"] == "1.5"
    # The shared settings: namespace, Kafka, Redis and tracing (a worker the autoscaler starts traces as it does).
    assert all(k.startswith(("FLEET_NAMESPACE", "FLEET_KAFKA_", "FLEET_REDIS_", "FLEET_TRACING_")) for k in env)
    assert "FLEET_TRACING_OTLP_ENDPOINT" in env


def test_inherited_worker_env() -> None:
    env = {
        "FLEET_WORKER_DEVICE": "cuda",
        "FLEET_WORKER_MODELS": "a",
        "FLEET_WORKER_ID": "x",
        "FLEET_AUTOSCALER_MODELS": "a",
        "FLEET_LOG_LEVEL": "DEBUG",
        "HOME": "/root",
    }
    assert inherited_worker_env(env) == {"FLEET_WORKER_DEVICE": "cuda", "FLEET_LOG_LEVEL": "DEBUG"}
