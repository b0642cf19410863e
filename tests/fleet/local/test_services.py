"""fleet.local.services: each service's environment (pure) and the topics re-created for the registered
models (real broker and Redis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from fleet.demo.modelgen import tiny_mlp
from fleet.local.services import (
    LOCAL_BROKER_ENV,
    autoscaler_env,
    base_env,
    gateway_env,
    recreate_topics,
    registered_models,
    worker_env,
)
from fleet.local.stack import StackConfig
from fleet.models.artifacts import build_record
from schemas import FleetSettings, ModelRegistry, Names


def config(**kw: Any) -> StackConfig:
    return StackConfig(home=Path("/tmp/home"), namespace="ns1", env={"KEEP": "1", "FLEET_NAMESPACE": "other"}, **kw)


def test_base_env_names_the_stack_and_tunes_only_the_embedded_broker() -> None:
    env = base_env(config(), "127.0.0.1:9092", "redis://127.0.0.1:6379/0")
    assert env["KEEP"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert (env["FLEET_NAMESPACE"], env["FLEET_KAFKA_BOOTSTRAP"], env["FLEET_REDIS_URL"]) == (
        "ns1", "127.0.0.1:9092", "redis://127.0.0.1:6379/0",
    )  # fmt: skip
    assert LOCAL_BROKER_ENV.items() <= env.items()
    external = base_env(config(kafka="kafka:9092"), "kafka:9092", "redis://r")
    assert not set(LOCAL_BROKER_ENV) & set(external)


def test_the_caller_may_override_the_broker_timings() -> None:
    cfg = StackConfig(home=Path("/tmp/h"), env={"FLEET_KAFKA_SESSION_TIMEOUT_MS": "9000"})
    assert base_env(cfg, "b", "r")["FLEET_KAFKA_SESSION_TIMEOUT_MS"] == "9000"


def test_gateway_env_listens_where_configured() -> None:
    env = gateway_env({"A": "1"}, config(host="0.0.0.0"), 8123)
    assert env == {"A": "1", "FLEET_GATEWAY_HOST": "0.0.0.0", "FLEET_GATEWAY_PORT": "8123"}


def test_autoscaler_env_autoscaled_and_placed() -> None:
    env = autoscaler_env({}, config(autoscale=True, workers=2, max_workers=5, models=("a", "b")), "/l/workers")
    assert env["FLEET_AUTOSCALER_BACKEND"] == "local" and env["FLEET_AUTOSCALER_PLACEMENT"] == "false"
    assert (env["FLEET_AUTOSCALER_MIN_REPLICAS"], env["FLEET_AUTOSCALER_MAX_REPLICAS"]) == ("2", "5")
    assert env["FLEET_AUTOSCALER_MODELS"] == "a,b" and env["FLEET_AUTOSCALER_LOG_DIR"] == "/l/workers"
    assert "FLEET_WORKER_DEVICE" not in env
    placed = autoscaler_env({}, config(placement=True, workers=3, device="cuda:0"), "/l")
    assert (placed["FLEET_AUTOSCALER_PLACEMENT"], placed["FLEET_AUTOSCALER_MIN_REPLICAS"]) == ("true", "1")
    assert placed["FLEET_AUTOSCALER_MODELS"] == "" and "FLEET_AUTOSCALER_MAX_REPLICAS" not in placed
    assert placed["FLEET_WORKER_DEVICE"] == "cuda:0"


def test_worker_env_carries_mode_id_and_device() -> None:
    env = worker_env({"A": "1"}, config(device="cpu"), {"FLEET_WORKER_MODELS": "a"}, "local-x-w1")
    assert env == {"A": "1", "FLEET_WORKER_MODELS": "a", "FLEET_WORKER_ID": "local-x-w1", "FLEET_WORKER_DEVICE": "cpu"}


async def test_recreate_topics_creates_every_registered_models_topics(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    assert await recreate_topics(fleet_settings, {}) == []
    registry = ModelRegistry(redis_client, names)
    for model in ("m-a", "m-b"):
        await registry.register(build_record(model, "1", tiny_mlp(tmp_path / f"{model}.onnx")))
    assert await registered_models(fleet_settings) == ["m-a", "m-b"]
    env = {"FLEET_KAFKA_BOOTSTRAP": fleet_settings.kafka.bootstrap}
    assert await recreate_topics(fleet_settings, env) == ["m-a", "m-b"]
    admin = AIOKafkaAdminClient(**fleet_settings.kafka.client_kwargs())
    await admin.start()
    try:
        topics = set(await admin.list_topics())
    finally:
        await admin.close()
    assert {*names.model_topics("m-a"), *names.model_topics("m-b")} <= topics
