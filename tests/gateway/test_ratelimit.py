"""The token buckets against a real Redis: burst, refusal with a retry time, refill, several buckets."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.ratelimit import Bucket, TokenBuckets, _Block, _wait_ms
from schemas import Names


async def test_bucket_allows_its_capacity_then_refuses_with_retry_after(redis_client: Any, names: Names) -> None:
    buckets = TokenBuckets(redis_client)
    bucket = Bucket.for_rate(names.key_bucket_key("k1"), rate=2.0, burst_s=1.5)  # capacity 3
    assert bucket.capacity == 3.0
    verdicts = [await buckets.take([bucket]) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    refused = verdicts[-1]
    assert refused.limiting == bucket
    # An empty bucket at 2 tokens/s needs at most 500 ms for the next token.
    assert 0 < refused.retry_after_ms <= 500 and refused.retry_after_s == 1
    ttl = await redis_client.pttl(bucket.key)
    assert 0 < ttl <= 1500 + 1000 + 50  # expires once it would be full again (plus 1 s slack)


async def test_bucket_refills_with_elapsed_time(redis_client: Any, names: Names) -> None:
    buckets = TokenBuckets(redis_client, lease_s=0.01)  # refused locally no longer than the bucket is empty
    bucket = Bucket(names.key_bucket_key("k2"), rate=20.0, capacity=1.0)
    assert (await buckets.take([bucket])).allowed
    refused = await buckets.take([bucket])
    assert not refused.allowed and refused.retry_after_ms <= 50
    await asyncio.sleep(refused.retry_after_ms / 1000 + 0.02)
    assert (await buckets.take([bucket])).allowed


async def test_all_buckets_or_none(redis_client: Any, names: Names) -> None:
    buckets = TokenBuckets(redis_client, lease_s=1.0)  # blocks held for the whole test
    roomy = Bucket(names.key_bucket_key("roomy"), rate=1.0, capacity=10.0)
    tight = Bucket(names.model_bucket_key("m"), rate=0.5, capacity=1.0)
    assert (await buckets.take([roomy, tight])).allowed
    refused = await buckets.take([roomy, tight])
    assert not refused.allowed and refused.limiting == tight
    assert 1000 < refused.retry_after_ms <= 2000 and refused.retry_after_s == 2
    # The refused request took nothing: what this gateway leased of the roomy bucket meanwhile (a block of at
    # most a quarter of its capacity) serves its next request without a Redis call.
    level = float(await redis_client.hget(roomy.key, "t"))
    assert 6.9 < level <= 9.1
    calls = buckets.lease_calls
    assert (await buckets.take([roomy])).allowed and buckets.lease_calls == calls


def test_the_wait_answered_is_the_wait_redis_gave_whatever_the_clock_reads() -> None:
    # A monotonic clock at 7771.123456 s: refused_until - leased_at is 0.0500000000001819 in floats.
    leased_at = 7771.123456
    block = _Block(leased_at=leased_at, refused_until=leased_at + 50 / 1000)
    assert _wait_ms(block, leased_at) == 50
