"""What every request path of the gateway uses: its settings, Redis, the registry cache, the Kafka publisher, the
reply listener, metrics and the body decoder (created and closed by the `Gateway`)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from common.wake import WakeNotes
from schemas import Names

from .limits import Decoder
from .metrics import GatewayMetrics
from .publisher import RequestPublisher
from .registry_cache import RegistryCache
from .replies import ReplyListener
from .settings import GatewaySettings


@dataclass(frozen=True)
class Backends:
    """What the routes use; created and closed by the Gateway."""

    settings: GatewaySettings
    names: Names
    redis: aioredis.Redis  # the registry's and the readiness check's connection pool
    cache: RegistryCache
    publisher: RequestPublisher
    listener: ReplyListener
    metrics: GatewayMetrics
    version: str
    decoder: Decoder
    wake: WakeNotes  # names the partitions requests landed on, for pool workers' dormant partitions
