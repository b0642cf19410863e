"""The environments the local stack gives its services (gateway, autoscaler, workers), and the embedded
broker's topics: a new or restarted embedded broker has none, so every registered model's are created."""

from __future__ import annotations

from collections.abc import Mapping

from schemas import FleetSettings, KafkaSettings, ModelRegistry, Names, load
from schemas.topics import ensure_model_topics

from .config import StackConfig

#: Consumer-group timings that suit the embedded broker (each join waits max(1 s, session/2)).
LOCAL_BROKER_ENV = {"FLEET_KAFKA_SESSION_TIMEOUT_MS": "2000", "FLEET_KAFKA_HEARTBEAT_INTERVAL_MS": "500"}


def base_env(config: StackConfig, kafka_bootstrap: str, redis_url: str) -> dict[str, str]:
    """What every service gets: the caller's environment, the broker timings (embedded broker only), the
    namespace and the addresses."""
    env = dict(config.env)
    if not config.kafka:
        for key, value in LOCAL_BROKER_ENV.items():
            env.setdefault(key, value)
    env.update(
        FLEET_NAMESPACE=config.namespace,
        FLEET_KAFKA_BOOTSTRAP=kafka_bootstrap,
        FLEET_REDIS_URL=redis_url,
        PYTHONUNBUFFERED="1",
    )
    return env


def gateway_env(base: Mapping[str, str], config: StackConfig, port: int) -> dict[str, str]:
    """The gateway's: listen address and port."""
    return {**base, "FLEET_GATEWAY_HOST": config.host, "FLEET_GATEWAY_PORT": str(port)}


def autoscaler_env(base: Mapping[str, str], config: StackConfig, worker_logs: str) -> dict[str, str]:
    """The autoscaler's: local backend, replica bounds, placement on or off, where its workers log."""
    env = {
        **base,
        "FLEET_AUTOSCALER_BACKEND": "local",
        # With placement the scheduler assigns replicas to the running workers (one each, unless scaled).
        "FLEET_AUTOSCALER_MIN_REPLICAS": "1" if config.placement else str(config.workers),
        "FLEET_AUTOSCALER_PLACEMENT": "true" if config.placement else "false",
        "FLEET_AUTOSCALER_LOG_DIR": worker_logs,
        "FLEET_AUTOSCALER_DRAIN_TIMEOUT_S": str(config.drain_timeout_s),
        "FLEET_AUTOSCALER_MODELS": ",".join(config.models or ()),
    }
    if config.max_workers is not None:
        env["FLEET_AUTOSCALER_MAX_REPLICAS"] = str(config.max_workers)
    if config.device:
        env["FLEET_WORKER_DEVICE"] = config.device  # handed on to the workers it spawns
    return env


def worker_env(base: Mapping[str, str], config: StackConfig, mode: Mapping[str, str], worker_id: str) -> dict[str, str]:
    """A worker's: its mode (fixed models or following its assignment), id and device."""
    env = {**base, **mode, "FLEET_WORKER_ID": worker_id}
    if config.device:
        env["FLEET_WORKER_DEVICE"] = config.device
    return env


async def registered_models(settings: FleetSettings) -> list[str]:
    """The models registered in ``settings``' namespace."""
    client = settings.redis.client()
    try:
        return await ModelRegistry(client, Names(settings.namespace)).models()
    finally:
        await client.aclose()


async def recreate_topics(settings: FleetSettings, env: Mapping[str, str]) -> list[str]:
    """Create the topics of every registered model (a new or restarted embedded broker has none), with the
    Kafka settings ``env`` gives the services; the models."""
    models = await registered_models(settings)
    kafka = load(KafkaSettings, env, "FLEET_KAFKA_")
    for model in models:
        await ensure_model_topics(kafka, Names(settings.namespace), model)
    return models
