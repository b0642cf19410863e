"""The environments the local stack gives its services (gateway, autoscaler, workers), and the embedded
broker's topics: a new or restarted embedded broker has none, so every registered model's are created."""

from __future__ import annotations

import os
from collections.abc import Mapping

from schemas import FleetSettings, KafkaSettings, ModelRegistry, Names, load
from schemas.topics import ensure_model_topics

from .config import StackConfig
from .servers import free_port

#: Settings that suit the embedded broker: consumer-group timings (each join waits max(1 s, session/2)), and pool
#: workers leaving quiet partitions out of their fetches (it pays for every partition a fetch names). Every fleet
#: publisher names the partitions it wrote (wake notes), so the sweep is only a safety net: every 10 s (1,000 idle
#: models on 2 pool workers: the whole fleet ~26 % -> ~16 % of a core against a sweep every second; 30 s saved
#: nothing more that could be measured). A raw Kafka producer's record to a dormant partition is noted by the
#: autoscaler within a probe of it (FLEET_AUTOSCALER_QUIET_PROBE_S, 5 s), at worst at the next sweep. Dormant after
#: 2 s (more than the 1 s between notes of a partition): 500 models under skewed load, a fetch named about half the
#: partitions it did at 5 s (hot p99 85-100 ms vs 98-106 ms, ~10 % more answered, interleaved runs).
LOCAL_BROKER_ENV = {
    "FLEET_KAFKA_SESSION_TIMEOUT_MS": "2000",
    "FLEET_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    "FLEET_WORKER_POOL_DORMANT_AFTER_S": "2",
    "FLEET_WORKER_POOL_DORMANT_SWEEP_MS": "10000",
    "FLEET_GATEWAY_WAKE_INTERVAL_S": "1",  # ... and their gateways naming the partitions requests land on
    "FLEET_AUTOSCALER_WAKE_INTERVAL_S": "1",  # ... and the autoscaler those raw Kafka producers wrote to
}


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


def grpc_port(base: Mapping[str, str]) -> int:
    """The gateway's gRPC port: the caller's FLEET_GATEWAY_GRPC_PORT, else a free one (two stacks on one machine
    must not both bind the default 8001)."""
    return int(base.get("FLEET_GATEWAY_GRPC_PORT") or free_port())


def gateway_env(base: Mapping[str, str], config: StackConfig, port: int, grpc: int | None = None) -> dict[str, str]:
    """The gateway's: listen address, HTTP port and gRPC port (``grpc``, else as `grpc_port` picks)."""
    return {
        **base,
        "FLEET_GATEWAY_HOST": config.host,
        "FLEET_GATEWAY_PORT": str(port),
        "FLEET_GATEWAY_GRPC_PORT": str(grpc if grpc is not None else grpc_port(base)),
    }


#: Share of the machine's memory the pool workers' model budgets add up to (the rest: broker, Redis, gateway,
#: the workers' own runtime, and the overcommit on top of the budget).
POOL_MEMORY_SHARE = 0.5
#: Most pool workers when ``--max-workers`` is not given: one per CPU, at most this many.
POOL_MAX_WORKERS = 4


def machine_memory_bytes() -> int:
    """Physical memory of this machine (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def pool_max_workers(config: StackConfig, cpus: int | None = None) -> int:
    """Most pool workers: ``max_workers``, else one per CPU up to POOL_MAX_WORKERS, at least ``workers`` (pure)."""
    if config.max_workers is not None:
        return config.max_workers
    return max(1, config.workers, min(POOL_MAX_WORKERS, cpus or os.cpu_count() or 1))


def pool_budget_mb(memory_bytes: int, max_workers: int) -> float:
    """Each pool worker's FLEET_WORKER_MEMORY_BUDGET_MB: POOL_MEMORY_SHARE of the machine's memory split over the
    most workers the pool may have, so a full pool fits; 0 (unlimited) when the memory is unknown (pure)."""
    if memory_bytes <= 0:
        return 0.0
    return float(int(memory_bytes * POOL_MEMORY_SHARE / max(1, max_workers) / (1 << 20)))


def pool_env(config: StackConfig, memory_bytes: int | None = None) -> dict[str, str]:
    """The autoscaler's pool settings and its pool workers' memory budget (``FLEET_WORKER_*`` are handed on to
    the workers it spawns); a budget or overcommit set in the caller's environment is kept."""
    most = pool_max_workers(config)
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    budget = _number(config.env.get("FLEET_WORKER_MEMORY_BUDGET_MB"), pool_budget_mb(memory, most))
    overcommit = _number(config.env.get("FLEET_WORKER_OVERCOMMIT_PCT"), 10.0)
    return {
        "FLEET_AUTOSCALER_POOL": "true",
        "FLEET_AUTOSCALER_POOL_MIN_WORKERS": str(config.workers),
        "FLEET_AUTOSCALER_POOL_MAX_WORKERS": str(most),
        "FLEET_AUTOSCALER_POOL_WORKER_MEMORY_MB": f"{budget * (1 + overcommit / 100):g}",
        # One replica of every model while the pool runs (an idle model costs nothing in a pool worker); with
        # no fewest workers, idle models go to zero and a request wakes its model and the pool.
        "FLEET_AUTOSCALER_MIN_REPLICAS": "1" if config.workers > 0 else "0",
        "FLEET_AUTOSCALER_MAX_REPLICAS": str(most),
        "FLEET_WORKER_MEMORY_BUDGET_MB": f"{budget:g}",
    }


def _number(value: str | None, default: float) -> float:
    """``value`` as a number; ``default`` when unset or not a number (the worker reports a bad setting itself)."""
    try:
        return float(value) if value else default
    except ValueError:
        return default


def autoscaler_env(base: Mapping[str, str], config: StackConfig, worker_logs: str) -> dict[str, str]:
    """The autoscaler's: local backend, replica bounds, pool or placement on or off, where its workers log."""
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
    if config.pool:
        env.update(pool_env(config))
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
