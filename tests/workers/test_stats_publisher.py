"""The service-stats publisher writes a model's report when it changed, not every beat (real Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import Names
from workers.stats import STATS_REFRESH_S, ModelStats, StatsPublisher

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _hset_calls(redis: Any) -> int:
    return int((await redis.info("commandstats")).get("cmdstat_hset", {}).get("calls", 0))


async def test_reports_are_written_when_they_change_and_withdrawn_when_the_model_goes(
    redis_client: Any, names: Names
) -> None:
    served = {"busy": ModelStats(), "quiet": ModelStats()}
    served["busy"].observe_round(4, 0.02, [12.0, 15.0, 11.0, 14.0])
    clock = Clock()
    publisher = StatsPublisher(redis_client, names, "w1", lambda: dict(served), list, 1.0, clock=clock)
    busy, quiet = names.stats_key("busy", "w1"), names.stats_key("quiet", "w1")

    assert await publisher.publish_once()
    assert (await redis_client.hgetall(busy))[b"completed"] == b"4"
    assert not await redis_client.exists(quiet)  # it measured nothing: a missing report reads the same
    writes = await _hset_calls(redis_client)
    for _ in range(5):  # idle beats: nothing is written again
        clock.now += 1.0
        assert await publisher.publish_once()
    assert await _hset_calls(redis_client) == writes

    served["busy"].in_hand = 3  # a change: written at the next beat
    assert await publisher.publish_once()
    assert (await redis_client.hgetall(busy))[b"queue"] == b"3"
    assert await _hset_calls(redis_client) == writes + 1

    clock.now += STATS_REFRESH_S  # unchanged, but due again (a report lost by Redis comes back)
    assert await publisher.publish_once()
    assert await _hset_calls(redis_client) == writes + 2
    assert await redis_client.ttl(busy) > STATS_REFRESH_S

    del served["busy"]  # no longer served (unassigned): its report goes at once
    assert await publisher.publish_once()
    assert not await redis_client.exists(busy)
    assert await redis_client.zscore(names.stats_index_key("busy"), "w1") is None
