"""A small TTL cache in front of the model registry, so a request does not cost a Redis round trip.

Records are immutable once written; only a model's default pointer, its traffic split (and removals)
can change, so a short TTL bounds how stale an answer may be: a changed split or default is seen
within ``ttl_s``. Misses for the same key share one lookup, and "not found" answers are cached too
(an unknown name sent in a loop must not hammer Redis).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from schemas import ErrorCode, FleetError, ModelRecord, ModelRegistry, RegistryError, SchemaError
from schemas.traffic import TrafficSplit

from .errors import BackendDownError, ModelNotFoundError, VersionNotFoundError

_Key = tuple[str, str | None]
#: A record, or a factory of the error to raise for it.
_Outcome = ModelRecord | Callable[[], FleetError]
#: A split (None: no split), or a factory of the error to raise for it.
_SplitOutcome = TrafficSplit | None | Callable[[], FleetError]
_MAX_ENTRIES = 10_000

log = logging.getLogger("fleet.gateway")


class RegistryCache:
    """TTL-cached ``ModelRegistry.get`` with lookups bounded by ``timeout_s``."""

    def __init__(
        self,
        registry: ModelRegistry,
        ttl_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._entries: dict[_Key, tuple[float, _Outcome]] = {}
        self._pending: dict[_Key, asyncio.Task[_Outcome]] = {}
        self._splits: dict[str, tuple[float, TrafficSplit | None]] = {}
        self._split_pending: dict[str, asyncio.Task[_SplitOutcome]] = {}

    @property
    def registry(self) -> ModelRegistry:
        """The registry behind the cache (for uncached calls such as listing versions)."""
        return self._registry

    async def get(self, model: str, version: str | None = None) -> ModelRecord:
        """The record of ``model`` at ``version`` (its default when None).

        Raises ModelNotFoundError / VersionNotFoundError (404) or BackendDownError (503).
        """
        key = (model, version)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return _unwrap(entry[1])
        lookup = self._pending.get(key)
        if lookup is None:
            # One task per key: concurrent misses share it, and a waiter that is cancelled (its
            # client went away) does not cancel the lookup the others wait for.
            lookup = asyncio.create_task(self._lookup(key))
            self._pending[key] = lookup
        return _unwrap(await asyncio.shield(lookup))

    async def routed(self, record: ModelRecord, key: str | None) -> ModelRecord:
        """The record that serves an unversioned request whose default is ``record``: the version the
        model's traffic split picks for ``key`` (the request id; random when None), or ``record`` itself
        when the model has no split."""
        split = await self.split(record.name)
        if split is None:
            return record
        version = split.pick(key)
        return record if version == record.version else await self.get(record.name, version)

    async def split(self, model: str) -> TrafficSplit | None:
        """The traffic split of ``model`` (None: all to the default), cached like the records.

        When Redis fails and an expired split is known, that split keeps serving; otherwise 503.
        """
        entry = self._splits.get(model)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        lookup = self._split_pending.get(model)
        if lookup is None:
            lookup = asyncio.create_task(self._split_lookup(model))
            self._split_pending[model] = lookup
        outcome = await asyncio.shield(lookup)
        if outcome is None or isinstance(outcome, TrafficSplit):
            return outcome
        if entry is not None:
            return entry[1]
        raise outcome()

    async def close(self) -> None:
        """Cancel the lookups in progress."""
        pending: list[asyncio.Task[_Outcome] | asyncio.Task[_SplitOutcome]] = [
            *self._pending.values(),
            *self._split_pending.values(),
        ]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def invalidate(self) -> None:
        """Forget every cached answer."""
        self._entries.clear()
        self._splits.clear()

    async def _split_lookup(self, model: str) -> _SplitOutcome:
        try:
            async with asyncio.timeout(self._timeout_s):
                split = await self._registry.traffic(model)
        except TimeoutError:
            reason = f"traffic split lookup took longer than {self._timeout_s:g} s"
            return functools.partial(BackendDownError, "redis", reason)
        except SchemaError as exc:  # a hand-edited hash: serve the default rather than fail every request
            log.warning("ignoring the traffic split of %s: %s", model, exc.message)
            split = None
        except FleetError as exc:
            return functools.partial(BackendDownError, "redis", exc.message.removeprefix("Redis unavailable: "))
        finally:
            del self._split_pending[model]
        if len(self._splits) >= _MAX_ENTRIES:
            self._splits.clear()
        self._splits[model] = (self._clock() + self._ttl_s, split)
        return split

    async def _lookup(self, key: _Key) -> _Outcome:
        try:
            outcome, cacheable = await self._fetch(*key)
            if cacheable:
                self._store(key, outcome)
            return outcome
        finally:
            del self._pending[key]

    async def _fetch(self, model: str, version: str | None) -> tuple[_Outcome, bool]:
        """The outcome of one registry lookup and whether it may be cached (an outage may not)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._registry.get(model, version), True
        except TimeoutError:
            reason = f"registry lookup took longer than {self._timeout_s:g} s"
            return functools.partial(BackendDownError, "redis", reason), False
        except RegistryError as exc:
            if exc.code is ErrorCode.VERSION_NOT_FOUND and version is not None:
                return functools.partial(VersionNotFoundError, model, version), True
            if exc.code is ErrorCode.MODEL_NOT_FOUND:
                return functools.partial(ModelNotFoundError, model), True
            return functools.partial(FleetError, exc.message, code=exc.code), False
        except FleetError as exc:  # BackendUnavailableError from the registry, or a bad stored record
            if exc.code is ErrorCode.BACKEND_UNAVAILABLE:
                reason = exc.message.removeprefix("Redis unavailable: ")
                return functools.partial(BackendDownError, "redis", reason), False
            return functools.partial(FleetError, exc.message, code=exc.code), False

    def _store(self, key: _Key, outcome: _Outcome) -> None:
        if len(self._entries) >= _MAX_ENTRIES:
            now = self._clock()
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
        self._entries[key] = (self._clock() + self._ttl_s, outcome)


def _unwrap(outcome: _Outcome) -> ModelRecord:
    if isinstance(outcome, ModelRecord):
        return outcome
    raise outcome()  # a fresh exception each time: re-raising one instance would grow its traceback
