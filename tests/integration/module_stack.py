"""A stack shared by the tests of one module that only send it requests: its own namespace (the same
test-friendly Kafka timings as the ``fleet_settings`` fixture), the models registered, a gateway and a worker.
A stack per test costs a Kafka group join (~1 s) and a drain each and proves nothing more for such tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from gateway import Gateway, GatewaySettings
from schemas import FleetSettings, KafkaSettings, ModelRecord, ModelRegistry, Names, RedisSettings
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings


def module_settings(kafka_bootstrap: str, redis_url: str, label: str) -> FleetSettings:
    """Settings for a namespace of the module's own (``t-{label}-{random}``), as the ``fleet_settings`` fixture."""
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap, fetch_max_wait_ms=10, session_timeout_ms=2000, heartbeat_interval_ms=500,
        request_timeout_ms=3000, partitions=4,
    )  # fmt: skip
    return FleetSettings(namespace=f"t-{label}-{uuid.uuid4().hex[:8]}", kafka=kafka, redis=RedisSettings(url=redis_url))


@dataclass
class ModuleStack:
    """What the module's tests use: the settings, the records by name, the worker, (when started) the gateway,
    and a Redis client."""

    settings: FleetSettings
    records: dict[str, ModelRecord]
    worker: Worker
    gateway: Gateway | None
    redis: Any

    @property
    def names(self) -> Names:
        return Names(self.settings.namespace)


@asynccontextmanager
async def module_stack(
    settings: FleetSettings, records: Sequence[ModelRecord], *, gateway: bool = True
) -> AsyncIterator[ModuleStack]:
    """``records`` registered (with their topics), a gateway (unless ``gateway`` is false) and a ready worker
    serving them; afterwards the namespace's Redis keys are deleted."""
    names = Names(settings.namespace)
    redis = settings.redis.client()
    try:
        for record in records:
            await ModelRegistry(redis, names).register(record)
            await ensure_model_topics(settings.kafka, names, record.name)
        worker_settings = WorkerSettings(models=tuple(r.name for r in records), fleet=settings)
        if gateway:
            async with Gateway(GatewaySettings(fleet=settings, port=0, default_timeout_s=20.0)) as gw:
                await gw.wait_ready()
                async with Worker(worker_settings) as worker:
                    await worker.wait_ready(30)
                    yield ModuleStack(settings, {r.name: r for r in records}, worker, gw, redis)
        else:
            async with Worker(worker_settings) as worker:
                await worker.wait_ready(30)
                yield ModuleStack(settings, {r.name: r for r in records}, worker, None, redis)
    finally:
        async for key in redis.scan_iter(match=f"{settings.namespace}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()
