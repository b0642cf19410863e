"""Partition leases in Redis: which pool worker consumes a topic-partition, and which partitions it should own.

A partition is consumed only under a lease ``Names.lease_key(topic, p)`` holding the worker id with a TTL
(3 heartbeat intervals). Claiming and renewing are one Lua script (set when free, extend when ours) and
releasing is a compare-and-delete, so a worker never touches another's lease. A crashed worker's leases
expire and its partitions are claimed by their new owners; a worker that lets a partition go first
finishes and commits what it has in hand, then deletes the lease so the new owner starts at once.

Which partitions a worker should own is pure arithmetic on the model's replicas (the sorted ids of the
workers that serve it): partition p of each of the model's topics goes to ``replicas[p % len(replicas)]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import text
from schemas import Names

# Each key: set when free, extend when ours; 1 where the caller holds the lease afterwards.
_CLAIM = """
local held = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    held[i] = 1
  elseif v == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
"""
# Each key: delete when ours.
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    n = n + redis.call('DEL', key)
  end
end
return n
"""
#: Keys per script call (one call renews a whole batch: a worker's renewals cost a few commands, not one each).
_BATCH = 500


def owned_partitions(worker_id: str, replicas: Sequence[str], partitions: int) -> list[int]:
    """The partitions (of ``partitions``) that ``worker_id`` owns among ``replicas`` (it counts as one)."""
    ordered = sorted(set(replicas) | {worker_id})
    index, count = ordered.index(worker_id), len(ordered)
    return [p for p in range(partitions) if p % count == index]


class PartitionLeases:
    """Claims, renews and releases one worker's partition leases (one script call per 500 partitions)."""

    def __init__(self, redis: Any, names: Names, worker_id: str, ttl_ms: int) -> None:
        self._redis = redis
        self._names = names
        self.worker_id = worker_id
        self.ttl_ms = ttl_ms
        self._claim = redis.register_script(_CLAIM)  # EVALSHA, loaded on first use
        self._release = redis.register_script(_RELEASE)

    async def claim(self, partitions: Sequence[tuple[str, int]]) -> list[bool]:
        """Claim (or renew) each ``(topic, partition)``; True where this worker holds it now. Raises RedisError."""
        held: list[bool] = []
        for start in range(0, len(partitions), _BATCH):
            keys = [self._names.lease_key(t, p) for t, p in partitions[start : start + _BATCH]]
            held.extend(bool(r) for r in await self._claim(keys=keys, args=[self.worker_id, self.ttl_ms]))
        return held

    async def release(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Delete the leases of ``partitions`` this worker holds (others' are left alone). Raises RedisError."""
        for start in range(0, len(partitions), _BATCH):
            keys = [self._names.lease_key(t, p) for t, p in partitions[start : start + _BATCH]]
            await self._release(keys=keys, args=[self.worker_id])

    async def holders(self, partitions: Sequence[tuple[str, int]]) -> list[str | None]:
        """Who holds each lease (None: nobody). Raises RedisError."""
        values = await self._redis.mget([self._names.lease_key(t, p) for t, p in partitions]) if partitions else []
        return [None if v is None else (text(v)) for v in values]
