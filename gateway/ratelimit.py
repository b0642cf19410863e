"""Token buckets held in Redis, so every gateway of a fleet draws from the same ones.

One Lua script call checks all the buckets a request needs (its API key's and its model's) in one
round trip: each bucket refills at ``rate`` tokens per second up to ``capacity`` since its last use
(Redis ``TIME`` is the clock, so gateways need not agree on theirs); the request takes one token from
each only when every bucket has one. Otherwise nothing is taken and the answer says how long until
the emptiest bucket holds a token again. A bucket key expires once it would be full again (a missing
bucket is a full one), so idle keys and models leave nothing behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: KEYS: bucket keys. ARGV: rate_1, capacity_1, rate_2, capacity_2, ... (tokens/s, tokens).
#: Returns {allowed (1/0), retry_after_ms, index of the limiting bucket (1-based; 0 when allowed)}.
TOKEN_BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local tokens = {}
local wait, worst = 0, 0
for i = 1, n do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local level = tonumber(state[1])
  local last = tonumber(state[2])
  if level == nil or last == nil then
    level = capacity
  elseif now > last then
    level = math.min(capacity, level + (now - last) * rate / 1000)
  end
  tokens[i] = level
  if level < 1 then
    local need = math.ceil((1 - level) * 1000 / rate)
    if need > wait then
      wait, worst = need, i
    end
  end
end
if worst > 0 then
  return {0, wait, worst}
end
for i = 1, n do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  local level = tokens[i] - 1
  redis.call('HSET', KEYS[i], 't', tostring(level), 'ts', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil((capacity - level) * 1000 / rate) + 1000)
end
return {1, 0, 0}
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One token bucket: its Redis key, refill rate (tokens per second) and capacity (burst)."""

    key: str
    rate: float
    capacity: float

    @classmethod
    def for_rate(cls, key: str, rate: float, burst_s: float) -> Bucket:
        """A bucket refilling at ``rate``/s that holds ``burst_s`` seconds of tokens (at least one)."""
        return cls(key, rate, max(1.0, rate * burst_s))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The script's answer: whether the request may go, and if not, which bucket and for how long."""

    allowed: bool
    retry_after_ms: int = 0
    limiting: Bucket | None = None

    @property
    def retry_after_s(self) -> int:
        """``Retry-After`` value: whole seconds, rounded up (at least 1 when refused)."""
        return max(1, math.ceil(self.retry_after_ms / 1000)) if not self.allowed else 0


class TokenBuckets:
    """Runs the token-bucket script (``redis.asyncio`` client); one round trip per ``take``."""

    def __init__(self, redis: Any) -> None:
        self._script = redis.register_script(TOKEN_BUCKET_LUA)

    async def take(self, buckets: list[Bucket]) -> Verdict:
        """Take one token from every bucket, or none when one of them is empty."""
        if not buckets:
            return Verdict(True)
        args: list[str] = []
        for bucket in buckets:
            args += [repr(float(bucket.rate)), repr(float(bucket.capacity))]
        allowed, wait_ms, index = await self._script(keys=[b.key for b in buckets], args=args)
        if int(allowed):
            return Verdict(True)
        return Verdict(False, int(wait_ms), buckets[int(index) - 1])
