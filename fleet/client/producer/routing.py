"""Where a producer sends a request: the routing cache of model defaults, traffic splits and records.

A request without a version goes where the gateway would send it: to the model's default version, or
to the version its traffic split picks for the request id (the gateway's hash). Both are re-read every
``ttl_s``, so a canary, a promotion or a rollback reaches direct producers too; the last known routing is
kept while Redis is unreachable. Records are cached for good (a version is immutable).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from schemas import BackendUnavailableError, ErrorCode, ModelRecord, RegistryError, SchemaError
from schemas.traffic import TrafficSplit

log = logging.getLogger("fleet.producer")


class RegistryReader(Protocol):
    """The registry reads routing needs (``schemas.ModelRegistry`` has them)."""

    async def default_version(self, model: str) -> str | None: ...

    async def traffic(self, model: str) -> TrafficSplit | None: ...

    async def get(self, model: str, version: str | None = None) -> ModelRecord: ...


@dataclass(slots=True)
class Route:
    """Where unversioned requests of a model go, as last read from the registry."""

    default: str
    split: TrafficSplit | None
    until: float  # clock() after which it is read again

    def pick(self, request_id: str) -> str:
        """The version ``request_id`` goes to: the split's pick for it, else the default."""
        return self.default if self.split is None else self.split.pick(request_id)


class RoutingCache:
    """Routes by model (re-read every ``ttl_s``) and records by (model, version) (kept for good)."""

    def __init__(self, registry: RegistryReader, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._ttl_s = ttl_s
        self._clock = clock
        self._routes: dict[str, Route] = {}
        self._records: dict[tuple[str, str], ModelRecord] = {}

    async def version_for(self, model: str, request_id: str) -> str:
        """The version an unversioned request ``request_id`` of ``model`` goes to now."""
        return (await self.route(model)).pick(request_id)

    async def record(self, model: str, version: str | None = None) -> ModelRecord:
        """The registry record of ``model`` at ``version`` (None: its default version now)."""
        if version is None:
            version = (await self.route(model)).default
        record = self._records.get((model, version))
        if record is None:
            record = self._records[(model, version)] = await self._registry.get(model, version)
        return record

    async def route(self, model: str) -> Route:
        """The default version and traffic split of ``model``, re-read once ``ttl_s`` has passed (the last
        known one is kept while Redis is unreachable). RegistryError MODEL_NOT_FOUND for an unknown model."""
        known = self._routes.get(model)
        now = self._clock()
        if known is not None and known.until > now:
            return known
        try:
            default = await self._registry.default_version(model)
            try:
                split = await self._registry.traffic(model)
            except SchemaError as exc:  # a hand-edited split: serve the default rather than fail every request
                log.warning("ignoring the traffic split of %s: %s", model, exc.message)
                split = None
        except BackendUnavailableError:
            if known is None:
                raise
            log.warning("routing of %s not refreshed (Redis unavailable); keeping the last known one", model)
            known.until = now + self._ttl_s
            return known
        if default is None:
            raise RegistryError(f"unknown model {model!r}", code=ErrorCode.MODEL_NOT_FOUND)
        route = self._routes[model] = Route(default, split, now + self._ttl_s)
        return route
