"""Traffic splits: how a model's unversioned requests are shared between its versions (canary / A-B).

A split maps versions to whole percentages that sum to 100 and is stored as the HASH
``{ns}:model:{m}:traffic`` (see :mod:`schemas.names`); without one every unversioned request goes
to the default version. The version of a request is picked per request: from a hash of its id when
it has one (so a retry lands on the same version), at random otherwise. Requests that name a
version are never split. The Lua scripts below change the split, the default pointer and the
rollback history (``{ns}:model:{m}:previous_default``) in one atomic step each.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, SchemaError
from .names import check_version
from .redis_values import text

#: The percentages of a split add up to this.
TOTAL_PERCENT = 100


def version_order(version: str) -> tuple[int, int, str]:
    """Sort key of version labels: numbers numerically first, then the rest by name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def bucket_of(key: str) -> int:
    """The bucket (0-99) of a request id: stable across processes and restarts (not Python's ``hash``)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % TOTAL_PERCENT


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """Versions with the percentage of unversioned traffic each receives (sorted by version)."""

    weights: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.weights:
            raise SchemaError("a traffic split names at least one version", code=ErrorCode.INVALID_REQUEST)
        seen: set[str] = set()
        for version, percent in self.weights:
            check_version(version)
            if version in seen:
                raise SchemaError(f"version {version!r} appears twice in the split", code=ErrorCode.INVALID_REQUEST)
            seen.add(version)
            if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= TOTAL_PERCENT:
                raise SchemaError(
                    f"the share of version {version!r} must be a whole percentage 0-100, got {percent!r}",
                    code=ErrorCode.INVALID_REQUEST,
                )
        total = sum(percent for _, percent in self.weights)
        if total != TOTAL_PERCENT:
            raise SchemaError(
                f"the shares of a traffic split must add up to {TOTAL_PERCENT}, these add up to {total}",
                code=ErrorCode.INVALID_REQUEST,
            )

    @classmethod
    def of(cls, shares: Mapping[str, int]) -> TrafficSplit:
        """A split from ``{version: percent}`` (validated; order does not matter)."""
        return cls(tuple(sorted(shares.items(), key=lambda item: version_order(item[0]))))

    @classmethod
    def parse(cls, items: Iterable[str]) -> TrafficSplit:
        """A split from ``VERSION=PERCENT`` words, e.g. ``["1=90", "2=10"]`` (the CLI's syntax)."""
        shares: dict[str, int] = {}
        for item in items:
            version, sep, share = item.partition("=")
            version, share = version.strip(), share.strip()
            if not sep or not version:
                raise SchemaError(f"{item!r} must look like VERSION=PERCENT", code=ErrorCode.INVALID_REQUEST)
            try:
                percent = int(share)
            except ValueError:
                raise SchemaError(
                    f"the share of version {version!r} must be a whole percentage, got {share!r}",
                    code=ErrorCode.INVALID_REQUEST,
                ) from None
            if version in shares:
                raise SchemaError(f"version {version!r} appears twice in the split", code=ErrorCode.INVALID_REQUEST)
            shares[version] = percent
        return cls.of(shares)

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> TrafficSplit | None:
        """The split stored in a Redis HASH (None when the hash is empty); SchemaError when it is malformed."""
        if not raw:
            return None
        decoded = {text(k): text(v) for k, v in raw.items()}
        try:
            return cls.of({version: int(percent) for version, percent in decoded.items()})
        except ValueError:
            raise SchemaError(f"malformed stored traffic split {decoded!r}") from None

    @property
    def versions(self) -> tuple[str, ...]:
        """Every version named by the split (those at 0% too)."""
        return tuple(version for version, _ in self.weights)

    def to_hash(self) -> dict[str, str]:
        """Fields of the Redis HASH."""
        return {version: str(percent) for version, percent in self.weights}

    def pick(self, key: str | None = None, rng: random.Random | None = None) -> str:
        """The version that serves one request: by ``bucket_of(key)`` when a key is given, else at random."""
        bucket = bucket_of(key) if key else (rng or _RANDOM).randrange(TOTAL_PERCENT)
        for version, percent in self.weights:
            if bucket < percent:
                return version
            bucket -= percent
        raise AssertionError("unreachable: the shares add up to 100")  # pragma: no cover

    def describe(self) -> str:
        """``1=90 2=10``: the CLI's syntax."""
        return " ".join(f"{version}={percent}" for version, percent in self.weights)



_RANDOM = random.Random()

#: KEYS: split, default, previous default, versions SET, registry epoch; ARGV: version, percent, version, ...
#: Replaces the split. When no split existed (a rollout starts), the current default is kept as the
#: previous default, so ``rollback`` returns to it. Returns {"ok", default} | {"missing", version} | {"nomodel"}.
#: A change bumps the registry epoch (``Names.registry_epoch_key``) in the same step.
SET_TRAFFIC_SCRIPT = """
for i = 1, #ARGV, 2 do
  if redis.call('SISMEMBER', KEYS[4], ARGV[i]) == 0 then return {'missing', ARGV[i]} end
end
local current = redis.call('GET', KEYS[2])
if not current then return {'nomodel'} end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[3], current) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('INCR', KEYS[5])
return {'ok', current}
"""

#: KEYS: default, previous default, registry epoch; ARGV: the new default. Keeps the old default as the
#: previous one; a change bumps the registry epoch.
SET_DEFAULT_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then redis.call('SET', KEYS[2], current) end
if current ~= ARGV[1] then redis.call('INCR', KEYS[3]) end
redis.call('SET', KEYS[1], ARGV[1])
return current
"""

#: KEYS: split, default, previous default, versions SET, registry epoch. Clears the split and points the
#: default back at the previous default (the current one when there is none, or it was removed), forgetting
#: the history and bumping the registry epoch. Returns {"ok", from, to} | {"nothing", default} | {"nomodel"}.
ROLLBACK_SCRIPT = """
local current = redis.call('GET', KEYS[2])
if not current then return {'nomodel'} end
local previous = redis.call('GET', KEYS[3])
if previous and redis.call('SISMEMBER', KEYS[4], previous) == 0 then previous = false end
local target = previous or current
if target == current and redis.call('EXISTS', KEYS[1]) == 0 then return {'nothing', current} end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SET', KEYS[2], target)
redis.call('INCR', KEYS[5])
return {'ok', current, target}
"""
