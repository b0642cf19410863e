"""``StackConfig``: what a :class:`~fleet.local.stack.LocalStack` starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from schemas.constants import DEFAULT_NAMESPACE

from .procs import RestartPolicy


@dataclass(frozen=True)
class StackConfig:
    """What :class:`LocalStack` starts."""

    home: Path
    namespace: str = DEFAULT_NAMESPACE
    kafka: str | None = None  # external bootstrap servers; None starts the embedded broker
    redis: str | None = None  # external Redis URL; None starts the embedded Valkey
    gateway: bool = True
    host: str = "127.0.0.1"
    port: int | None = None  # None picks a free port
    workers: int = 1  # fixed, placement: worker processes; autoscale: fewest per model; pool: fewest pool workers
    models: tuple[str, ...] | None = None  # None: every model registered (when the workers start, if fixed)
    autoscale: bool = False  # run the autoscaler (local backend) instead of fixed workers
    placement: bool = False  # run ``workers`` following workers and the autoscaler's placement scheduler
    pool: bool = False  # the autoscaler runs and sizes a pool of multi-model workers (the default of ``fleet up``)
    max_workers: int | None = None  # autoscale: most per model (None: the autoscaler's default); pool: most workers
    device: str | None = None
    durable_redis: bool = True  # the embedded Valkey keeps an append-only file in ``home/redis``
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    ready_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    supervise: bool = True  # restart a broker, Redis, gateway, autoscaler or fixed worker that dies
    restart: RestartPolicy = RestartPolicy()  # backoff between restarts, and when to give up
