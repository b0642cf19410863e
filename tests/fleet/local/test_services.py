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
    pool_budget_mb,
    pool_env,
    pool_max_workers,
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
    grpc_port = env.pop("FLEET_GATEWAY_GRPC_PORT")
    assert env == {"A": "1", "FLEET_GATEWAY_HOST": "0.0.0.0", "FLEET_GATEWAY_PORT": "8123"}
    assert int(grpc_port) > 0 and grpc_port != "8001"  # a free port: two stacks on a machine must not clash


def test_gateway_env_keeps_the_callers_grpc_port() -> None:
    assert gateway_env({"FLEET_GATEWAY_GRPC_PORT": "9001"}, config(), 8000)["FLEET_GATEWAY_GRPC_PORT"] == "9001"


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


def test_pool_env_sizes_the_pool_and_the_workers_budget_from_the_machine() -> None:
    gib = 1 << 30
    env = autoscaler_env({}, config(pool=True, workers=0, max_workers=4), "/l")
    assert env["FLEET_AUTOSCALER_POOL"] == "true"
    assert (env["FLEET_AUTOSCALER_POOL_MIN_WORKERS"], env["FLEET_AUTOSCALER_POOL_MAX_WORKERS"]) == ("0", "4")
    assert env["FLEET_AUTOSCALER_MIN_REPLICAS"] == "0"  # no fewest workers: idle models go to zero
    assert pool_budget_mb(16 * gib, 4) == 2048.0  # half of 16 GiB over 4 workers
    assert pool_budget_mb(0, 4) == 0.0  # memory unknown: unlimited
    sized = pool_env(config(pool=True, workers=1, max_workers=2), memory_bytes=8 * gib)
    assert sized["FLEET_WORKER_MEMORY_BUDGET_MB"] == "2048"
    assert sized["FLEET_AUTOSCALER_POOL_WORKER_MEMORY_MB"] == "2252.8"  # x (1 + 10 % overcommit)
    assert (sized["FLEET_AUTOSCALER_MIN_REPLICAS"], sized["FLEET_AUTOSCALER_MAX_REPLICAS"]) == ("1", "2")
    own = StackConfig(home=Path("/tmp/home"), pool=True, env={"FLEET_WORKER_MEMORY_BUDGET_MB": "300"})
    mine = pool_env(own, memory_bytes=8 * gib)
    assert mine["FLEET_WORKER_MEMORY_BUDGET_MB"] == "300"  # the caller's budget wins
    assert pool_max_workers(config(pool=True, workers=1), cpus=2) == 2
    assert pool_max_workers(config(pool=True, workers=1), cpus=64) == 4
    assert pool_max_workers(config(pool=True, workers=6), cpus=2) == 6


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
