"""Loading WorkerSettings from the environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from schemas import SettingsError, describe
from workers import WorkerSettings


def test_from_env_reads_worker_and_shared_settings() -> None:
    settings = WorkerSettings.from_env(
        {
            "FLEET_WORKER_MODELS": "a, b",
            "FLEET_WORKER_ID": "w-1",
            "FLEET_WORKER_DEVICE": "cuda:1",
            "FLEET_WORKER_PRELOAD": "false",
            "FLEET_WORKER_DRAIN_TIMEOUT_S": "2.5",
            "FLEET_NAMESPACE": "ns",
            "FLEET_KAFKA_BOOTSTRAP": "k:9",
            "REDIS_URL": "redis://r:1/0",
        }
    )
    assert settings.models == ("a", "b")
    assert settings.worker_id == "w-1" and settings.device == "cuda:1" and settings.preload is False
    assert settings.drain_timeout_s == 2.5
    assert settings.fleet.namespace == "ns"
    assert settings.fleet.kafka.bootstrap == "k:9" and settings.fleet.redis.url == "redis://r:1/0"


def test_defaults() -> None:
    settings = WorkerSettings.from_env({"FLEET_WORKER_MODELS": "m"})
    assert settings.device == "auto" and settings.intra_op_threads == 1 and settings.metrics_port == 0
    assert settings.preload is True and settings.max_fetch_records == 512
    assert (settings.bulk_max_batch, settings.bulk_share, settings.retry_attempts) == (32, 0.5, 3)
    assert settings.worker_id != WorkerSettings.from_env({"FLEET_WORKER_MODELS": "m"}).worker_id


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({}, "FLEET_WORKER_MODELS"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_WORKER_DEVCE": "cpu"}, "FLEET_WORKER_DEVCE"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_KAFKA_BOOTSTRAPP": "x"}, "FLEET_KAFKA_BOOTSTRAPP"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_WORKER_DEVICE": "tpu"}, "device"),
        ({"FLEET_WORKER_MODELS": "bad name"}, "MODELS"),
        ({"FLEET_WORKER_MODELS": "m,m"}, "twice"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_WORKER_INTRA_OP_THREADS": "many"}, "INTRA_OP_THREADS"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_WORKER_METRICS_PORT": "70000"}, "metrics_port"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_WORKER_BULK_MAX_BATCH": "0"}, "bulk_max_batch"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_WORKER_BULK_SHARE": "0"}, "bulk_share"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_WORKER_BULK_SHARE": "1.5"}, "bulk_share"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_WORKER_RETRY_ATTEMPTS": "0"}, "retry_attempts"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_WORKER_RETRY_BASE_MS": "500", "FLEET_WORKER_RETRY_MAX_MS": "1"}, "retry"),
        ({"FLEET_WORKER_MODELS": "m", "FLEET_WORKER_RETRY_JITTER": "2"}, "retry_jitter"),
    ],
)
def test_bad_settings_are_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        WorkerSettings.from_env(env)


def test_every_setting_is_documented() -> None:
    rows = describe(WorkerSettings, "FLEET_WORKER_")
    variables = {var for var, _, _ in rows}
    assert {"FLEET_WORKER_MODELS", "FLEET_WORKER_ID", "FLEET_NAMESPACE", "FLEET_KAFKA_BOOTSTRAP"} <= variables
    assert all(text for _, _, text in rows)


def test_entry_point_refuses_bad_settings() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    result = subprocess.run([sys.executable, "-m", "workers"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "FLEET_WORKER_MODELS" in result.stderr
