"""Leased token blocks: several gateways sharing one model's limit accept the limit's rate within ±10 % over a
window, with fewer Redis calls than accepted requests (one call per request before)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.ratelimit import Bucket, TokenBuckets
from schemas import Names

GATEWAYS = 4
LIMIT = 200.0  # requests per second, shared
WARMUP_S = 0.6  # drains the initial burst (capacity = 1 s of the rate) and lets the blocks' sizes settle
WINDOW_S = 3.0
TOLERANCE = 0.10


async def _gateway(buckets: TokenBuckets, bucket: Bucket, start: float, end: float) -> tuple[int, int]:
    """Offer requests as fast as the loop allows; (accepted in the window, offered in the window)."""
    accepted = offered = 0
    while (now := time.monotonic()) < end:
        verdict = await buckets.take([bucket])
        if now >= start:
            offered += 1
            accepted += verdict.allowed
        await asyncio.sleep(0 if verdict.allowed else 0.001)
    return accepted, offered


async def test_gateways_sharing_a_limit_accept_its_rate(redis_client: Any, names: Names) -> None:
    bucket = Bucket.for_rate(names.model_bucket_key("m"), LIMIT, burst_s=1.0)
    gateways = [TokenBuckets(redis_client) for _ in range(GATEWAYS)]
    start = time.monotonic() + WARMUP_S
    end = start + WINDOW_S
    results = await asyncio.gather(*(_gateway(g, bucket, start, end) for g in gateways))
    accepted = sum(a for a, _ in results)
    offered = sum(o for _, o in results)
    expected = LIMIT * WINDOW_S
    assert offered > 2 * expected, "the load must exceed the limit for the test to say anything"
    assert abs(accepted - expected) <= TOLERANCE * expected, (accepted, expected)
    assert all(a > 0 for a, _ in results)  # every gateway got a share
    # Blocks: fewer Redis calls than accepted requests (one per request, refused ones too, without leases).
    calls = sum(g.lease_calls for g in gateways)
    assert calls < accepted, (calls, accepted)
