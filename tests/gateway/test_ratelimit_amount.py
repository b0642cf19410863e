"""Token buckets taking an amount (the /v1 token limits) against a real Redis: a request takes its whole amount or
nothing, a refusal waits for the amount, an amount over the capacity takes the full bucket."""

from __future__ import annotations

from typing import Any

from gateway.ratelimit import Bucket, TokenBuckets
from schemas import Names


async def test_an_amount_is_taken_whole_or_not_at_all(redis_client: Any, names: Names) -> None:
    buckets = TokenBuckets(redis_client, lease_s=1.0)
    bucket = Bucket(names.model_bucket_key("m") + ":tokens", rate=10.0, capacity=100.0)
    assert (await buckets.take([bucket], 60)).allowed
    refused = await buckets.take([bucket], 60)  # 40 left: 60 are 2 s of refill away
    assert not refused.allowed and refused.limiting == bucket
    assert 1900 <= refused.retry_after_ms <= 2100 and refused.retry_after_s in (2, 3)
    level = float(await redis_client.hget(bucket.key, "t"))
    assert 39 <= level <= 41  # the refused request took nothing


async def test_a_small_amount_after_a_big_one_is_served_from_the_leased_block(redis_client: Any, names: Names) -> None:
    buckets = TokenBuckets(redis_client, lease_s=1.0)
    bucket = Bucket(names.key_bucket_key("k") + ":tokens", rate=1.0, capacity=50.0)
    assert (await buckets.take([bucket], 30)).allowed
    assert (await buckets.take([bucket], 20)).allowed  # leases the 20 it needs
    calls = buckets.lease_calls
    refused = await buckets.take([bucket], 1)
    assert not refused.allowed and buckets.lease_calls == calls + 1


async def test_an_amount_over_the_capacity_takes_the_full_bucket(redis_client: Any, names: Names) -> None:
    buckets = TokenBuckets(redis_client, lease_s=1.0)
    bucket = Bucket(names.model_bucket_key("big") + ":tokens", rate=5.0, capacity=10.0)
    assert (await buckets.take([bucket], 1000)).allowed  # a full bucket lets it through
    refused = await buckets.take([bucket], 1000)
    assert not refused.allowed and 1900 <= refused.retry_after_ms <= 2100  # until the bucket is full again
