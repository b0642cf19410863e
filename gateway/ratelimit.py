"""Token buckets held in Redis, shared by every gateway of a fleet, leased to each gateway in blocks.

A bucket refills at ``rate`` tokens per second up to ``capacity`` since its last use (Redis ``TIME`` is the
clock, so gateways need not agree on theirs); a missing bucket is a full one, and a bucket key expires once it
would be full again, so idle keys and models leave nothing behind.

A gateway does not ask Redis for every request: it leases a block of ``k`` tokens per Redis call (``LEASE_LUA``,
one bucket key per call, so each call touches one hash slot of a Redis Cluster) and serves requests from the
block locally. ``k`` follows the gateway's own rate on that bucket (about ``lease_s`` seconds of it: one token
while it is slow, more as it speeds up, never over a quarter of the bucket's capacity nor ``max_lease``), so a
model limited to L req/s costs each gateway about 1/``lease_s`` Redis calls per second instead of one per
request. A block not used up within ``lease_s`` is given back with the next lease call of that gateway for that
bucket (in the same script call). A refusal comes with the time until the bucket holds a token again; the
gateway then refuses locally for that long, and at least ``lease_s``, without asking again (so a refused
gateway asks Redis at most 1/``lease_s`` times a second per bucket however many requests it refuses; the
``Retry-After`` answered is whole seconds, at least 1, so a client that honours it is never refused locally).

What an outside observer sees: over a window of W seconds the fleet accepts at most ``rate * W + capacity``
requests of a bucket, as with one shared bucket; it may accept less by the blocks other gateways hold unused
(at most ``k`` per gateway, given back within ``lease_s`` while that gateway keeps serving the bucket). The test
(``tests/gateway/test_ratelimit_lease.py``) holds 4 gateways at ±10 % of the limit over a 3 s window.

A request needs a token of every bucket it draws from (its API key's and its model's): each bucket's block is
checked, the empty ones leased (one call per bucket, concurrently), and the request takes one token of each
only when every bucket has one; a refused bucket takes nothing from the others (tokens leased meanwhile stay in
this gateway's blocks for its next requests).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: KEYS[1]: one bucket. ARGV: rate (tokens/s), capacity (tokens), wanted (whole tokens >= 1), given back
#: (unused tokens of this gateway's previous block), least (grant nothing unless at least this many: a request's
#: amount). Returns {granted tokens, ms until ``least`` tokens when none}.
LEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local back = tonumber(ARGV[4])
local least = tonumber(ARGV[5] or '1')
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local level = tonumber(state[1])
local last = tonumber(state[2])
if level == nil or last == nil then
  level = capacity
elseif now > last then
  level = math.min(capacity, level + (now - last) * rate / 1000)
end
level = math.min(capacity, level + back)
local granted = math.min(wanted, math.floor(level))
if granted < least then granted = 0 end
level = level - granted
redis.call('HSET', KEYS[1], 't', tostring(level), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - level) * 1000 / rate) + 1000)
if granted < 1 then
  return {0, math.ceil((least - level) * 1000 / rate)}
end
return {granted, 0}
"""

#: Longest a leased block is held before its unused tokens are given back (and the block's target duration).
LEASE_S = 0.1
#: Most tokens one lease call takes.
MAX_LEASE = 1000
#: Half-life of a gateway's rate estimate per bucket (seconds).
_RATE_HALF_LIFE_S = 1.0


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
    """The answer: whether the request may go, and if not, which bucket and for how long."""

    allowed: bool
    retry_after_ms: int = 0
    limiting: Bucket | None = None

    @property
    def retry_after_s(self) -> int:
        """``Retry-After`` value: whole seconds, rounded up (at least 1 when refused)."""
        return max(1, math.ceil(self.retry_after_ms / 1000)) if not self.allowed else 0


@dataclass(slots=True)
class _Block:
    """This gateway's leased tokens of one bucket and its rate on it."""

    tokens: int = 0
    #: When the tokens were leased (monotonic s); unused ones are given back after ``lease_s``.
    leased_at: float = -math.inf
    #: Refuse locally until then (monotonic s): Redis said the bucket is empty.
    refused_until: float = -math.inf
    #: Tokens taken since the last lease call, and when that call was made.
    taken: int = 0
    since: float = field(default_factory=time.monotonic)
    #: Estimated requests per second of this gateway on the bucket (None until measured).
    rate: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TokenBuckets:
    """One gateway's view of the shared buckets (``redis.asyncio`` client): ``take`` serves from leased blocks
    and leases more with one Redis call per empty bucket."""

    def __init__(
        self,
        redis: Any,
        *,
        lease_s: float = LEASE_S,
        max_lease: int = MAX_LEASE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._script = redis.register_script(LEASE_LUA)
        self._lease_s = lease_s
        self._max_lease = max(1, max_lease)
        self._clock = clock
        self._blocks: dict[str, _Block] = {}
        #: Lease calls made (for tests and benchmarks).
        self.lease_calls = 0

    async def take(self, buckets: list[Bucket], amount: int = 1) -> Verdict:
        """Take ``amount`` tokens from every bucket, or none when one of them has fewer (an amount over a bucket's
        capacity takes the whole bucket: a request bigger than the burst waits for a full bucket, it is not
        refused for ever)."""
        if not buckets:
            return Verdict(True)
        amounts = [max(1, min(amount, math.floor(bucket.capacity))) for bucket in buckets]
        blocks = [self._block(bucket) for bucket in buckets]
        now = self._clock()
        for bucket, block in zip(buckets, blocks, strict=True):
            if block.refused_until > now:
                return Verdict(False, _wait_ms(block, now), bucket)
        empty = [
            (b, k, n) for b, k, n in zip(buckets, blocks, amounts, strict=True) if not self._usable(k, now, n)
        ]
        if empty:
            refusals = await asyncio.gather(*(self._lease(bucket, block, n) for bucket, block, n in empty))
            refused = [(wait, bucket) for wait, bucket in refusals if wait]
            if refused:
                wait, bucket = max(refused, key=lambda r: r[0])
                return Verdict(False, wait, bucket)
            if not all(block.tokens >= n for block, n in zip(blocks, amounts, strict=True)):  # taken meanwhile
                return await self.take(buckets, amount)
        for block, n in zip(blocks, amounts, strict=True):
            block.tokens -= n
            block.taken += n
        return Verdict(True)

    def _block(self, bucket: Bucket) -> _Block:
        block = self._blocks.get(bucket.key)
        if block is None:
            block = self._blocks[bucket.key] = _Block()
            if len(self._blocks) > 10_000:  # forget idle buckets (keys and models come and go)
                self._forget(self._clock())
        return block

    def _forget(self, now: float) -> None:
        for key in [k for k, b in self._blocks.items() if b.tokens == 0 and now - b.since > 10 * self._lease_s]:
            del self._blocks[key]

    def _usable(self, block: _Block, now: float, amount: int = 1) -> bool:
        return block.tokens >= amount and now - block.leased_at <= self._lease_s

    async def _lease(self, bucket: Bucket, block: _Block, amount: int = 1) -> tuple[int, Bucket]:
        """Lease a new block of ``bucket`` (giving back an expired one's tokens); (ms to wait, bucket) when
        Redis has no token for it, else (0, bucket)."""
        async with block.lock:
            now = self._clock()
            if self._usable(block, now, amount):  # a concurrent request leased meanwhile
                return 0, bucket
            if block.refused_until > now:
                return _wait_ms(block, now), bucket
            self._measure(block, now)
            back, block.tokens = block.tokens, 0
            wanted = max(amount, self._wanted(bucket, block))
            self.lease_calls += 1
            granted, wait_ms = await self._script(
                keys=[bucket.key],
                args=[repr(float(bucket.rate)), repr(float(bucket.capacity)), wanted, back, amount],
            )
            block.leased_at = self._clock()
            if int(granted) < 1:
                # Not before the bucket holds a token, nor within lease_s: refused gateways ask Redis about
                # 1/lease_s times a second each, however many requests they refuse.
                block.refused_until = block.leased_at + max(int(wait_ms) / 1000, self._lease_s)
                return _wait_ms(block, block.leased_at), bucket
            block.tokens = int(granted)
            return 0, bucket

    def _measure(self, block: _Block, now: float) -> None:
        """Fold the tokens taken since the last lease call into the block's rate estimate."""
        elapsed = now - block.since
        if elapsed <= 0:
            return
        observed = block.taken / elapsed
        if block.rate is None:
            block.rate = observed
        else:
            weight = 1 - 0.5 ** (elapsed / _RATE_HALF_LIFE_S)
            block.rate += weight * (observed - block.rate)
        block.taken, block.since = 0, now

    def _wanted(self, bucket: Bucket, block: _Block) -> int:
        """Tokens to lease: about ``lease_s`` of this gateway's rate, within 1..capacity/4 and ``max_lease``."""
        rate = block.rate or 0.0
        cap = max(1, min(self._max_lease, math.floor(bucket.capacity / 4)))
        return max(1, min(cap, math.ceil(rate * self._lease_s)))


def _wait_ms(block: _Block, now: float) -> int:
    """Milliseconds until a refused ``block`` may ask again: until its bucket holds a token, and at least
    ``lease_s`` after the refusal (never over the ``Retry-After`` answered, which is at least 1 s)."""
    # Rounded to the microsecond first: refused_until - leased_at comes back from floats a hair over the wait
    # Redis gave (7771.123456 + 0.05 - 7771.123456 = 0.0500000000001819), which ceil made 1 ms longer.
    return max(1, math.ceil(round((block.refused_until - now) * 1000, 3)))
