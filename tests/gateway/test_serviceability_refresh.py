"""The serviceability cache under load: when its entry expires, the requests that arrive during the refresh
share the one read instead of each reading Redis again, one after another under the view's lock."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from gateway.serviceability import Serviceability, ServiceabilityView
from schemas import ModelRecord, Names
from workers.heartbeat import Heartbeat


async def _reads(redis_client: Any) -> int:
    """How many fleet reads the server has run (each one pipelines exactly one EXISTS)."""
    stats = await redis_client.info("commandstats")
    return int(stats.get("cmdstat_exists", {}).get("calls", 0))


async def test_requests_that_arrive_during_a_refresh_share_its_read(
    redis_client: Any, names: Names, record: ModelRecord
) -> None:
    ticks = itertools.count(1000.0, 0.001)  # every caller asks a little later than the one before
    view = ServiceabilityView(redis_client, names, ttl_s=1.0, clock=lambda: next(ticks))
    await Heartbeat(redis_client, names, "w1", [record.name], 3600.0, list, lambda: "cpu").beat()
    assert (await view.verdict(record)).state is Serviceability.SERVED
    for _ in range(2000):  # past the TTL
        next(ticks)
    before = await _reads(redis_client)
    verdicts = await asyncio.gather(*(view.verdict(record) for _ in range(20)))
    assert all(v.state is Serviceability.SERVED for v in verdicts)
    assert await _reads(redis_client) - before == 1


async def test_a_negative_verdict_is_still_read_again_by_a_later_caller(
    redis_client: Any, names: Names, record: ModelRecord
) -> None:
    ticks = itertools.count(1000.0, 0.001)
    view = ServiceabilityView(redis_client, names, ttl_s=1.0, clock=lambda: next(ticks))
    assert (await view.verdict(record)).state is Serviceability.UNAVAILABLE  # no worker, no autoscaler
    await Heartbeat(redis_client, names, "w1", [record.name], 3600.0, list, lambda: "cpu").beat()
    assert (await view.verdict(record)).state is Serviceability.SERVED  # within the TTL, yet read again
