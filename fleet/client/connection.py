"""Where a command finds the fleet: flags, then environment, then a running local stack, then defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from schemas import FleetSettings, ModelRegistry, Names, load

from .stackfile import StackInfo, fleet_home, home_searched

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Target:
    """The deployment a command talks to: connection settings, gateway URL and the local stack if any."""

    settings: FleetSettings
    url: str
    home: Path
    stack: StackInfo | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)  # what commands that start processes pass on
    looked: str = ""  # where the local stack was looked for, in words
    guessed: bool = False  # True: no stack, flag or env named any address; every address is a default

    @property
    def names(self) -> Names:
        return Names(self.settings.namespace)


def env_first(env: Mapping[str, str], *keys: str) -> str | None:
    """The value of the first of ``keys`` set (non-empty) in ``env``."""
    for key in keys:
        if env.get(key):
            return env[key]
    return None


def resolve(
    env: Mapping[str, str],
    *,
    home: str | None = None,
    url: str | None = None,
    kafka: str | None = None,
    redis: str | None = None,
    namespace: str | None = None,
) -> Target:
    """Connection settings for a command; each value comes from the first of flag, env, stack.json, default."""
    state = fleet_home(env, home)
    looked = home_searched(env, home)
    stack = StackInfo.read(state)
    if stack is not None and not stack.owner_alive():
        looked += f"; found {state}, but the stack that wrote it (pid {stack.pid}) is gone"
        stack = None
    elif stack is None:
        looked += f"; no running stack in {state}" if state.is_dir() else "; found none"
    settings = load(FleetSettings, env, "")
    bootstrap = kafka or env_first(env, "FLEET_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP") or (stack and stack.kafka_bootstrap)
    redis_url = redis or env_first(env, "FLEET_REDIS_URL", "REDIS_URL") or (stack and stack.redis_url)
    ns = namespace or env_first(env, "FLEET_NAMESPACE", "FLEET_NS") or (stack and stack.namespace)
    if bootstrap:
        settings = dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, bootstrap=bootstrap))
    if redis_url:
        settings = dataclasses.replace(settings, redis=dataclasses.replace(settings.redis, url=redis_url))
    if ns:
        Names(ns)  # validates
        settings = dataclasses.replace(settings, namespace=ns)
    gateway = url or env.get("FLEET_URL") or (stack.gateway_url if stack else DEFAULT_URL)
    guessed = stack is None and not (
        url or kafka or redis or env_first(env, "FLEET_URL", "FLEET_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP")
        or env_first(env, "FLEET_REDIS_URL", "REDIS_URL")
    )  # fmt: skip
    return Target(
        settings=settings, url=gateway, home=state, stack=stack, env=dict(env), looked=looked, guessed=guessed
    )


@asynccontextmanager
async def open_registry(settings: FleetSettings) -> AsyncIterator[ModelRegistry]:
    """A registry on a fresh Redis client that is closed afterwards."""
    client = settings.redis.client()
    try:
        yield ModelRegistry(client, Names(settings.namespace))
    finally:
        await client.aclose()
