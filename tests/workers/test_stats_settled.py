"""The stats publisher passes over a model that saw nothing since its last report (once its windows drained)
without making its report again, and still writes every change (real Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import Names
from workers.stats import GPU_STEP_PCT, STATS_REFRESH_S, STATS_WINDOW_S, ModelStats, StatsPublisher


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStats(ModelStats):
    """`ModelStats` that counts the reports made of it."""

    made = 0

    def report(self, *args: Any, **kwargs: Any) -> Any:
        CountingStats.made += 1
        return super().report(*args, **kwargs)


def _made() -> int:
    made, CountingStats.made = CountingStats.made, 0
    return made


@pytest.mark.integration
async def test_an_unchanged_model_costs_no_report_and_a_change_is_still_written(
    redis_client: Any, names: Names
) -> None:
    clock = Clock()
    served = {f"m{i}": CountingStats(clock=clock) for i in range(40)}
    busy, quiet = served["m0"], served["m1"]
    busy.observe_round(2, 0.01, [12.0, 14.0])
    publisher = StatsPublisher(redis_client, names, "w1", lambda: served, list, 1.0, clock=clock)
    _made()

    assert await publisher.publish_once()
    assert _made() == 40
    clock.now += 1.0
    assert await publisher.publish_once()
    assert _made() == 1  # only the busy model: its window still holds samples
    clock.now += STATS_WINDOW_S  # its window drains: written once more (p95 back to 0), then settled
    assert await publisher.publish_once()
    assert _made() == 1
    assert (await redis_client.hgetall(names.stats_key("m0", "w1")))[b"p95_ms"] == b"0.0"
    for _ in range(3):
        clock.now += 1.0
        assert await publisher.publish_once()
    assert _made() == 0

    busy.in_hand = 3  # what the consumer sets, no observation: still seen
    quiet.observe_round(1, 0.01, [5.0])
    assert await publisher.publish_once()
    assert _made() == 2
    assert (await redis_client.hgetall(names.stats_key("m0", "w1")))[b"queue"] == b"3"
    assert (await redis_client.hgetall(names.stats_key("m1", "w1")))[b"completed"] == b"1"

    busy.in_hand = 0
    clock.now += STATS_WINDOW_S + 1.0
    assert await publisher.publish_once()
    _made()
    clock.now += STATS_REFRESH_S  # due again although unchanged (a report lost by Redis comes back)
    assert await publisher.publish_once()
    assert _made() == 2
    ttl = await redis_client.ttl(names.stats_key("m1", "w1"))
    assert ttl > STATS_REFRESH_S

    del served["m0"]  # no longer served: withdrawn
    assert await publisher.publish_once()
    assert not await redis_client.exists(names.stats_key("m0", "w1"))


def test_a_stored_report_holds_while_the_gpu_utilization_stays_within_its_step() -> None:
    stored = ({"gpu_util": "50.0"}, 0.0)
    assert StatsPublisher._holds(stored, 50.0 + GPU_STEP_PCT / 2, 1.0)
    assert not StatsPublisher._holds(stored, 50.0 + GPU_STEP_PCT, 1.0)
    assert not StatsPublisher._holds(stored, None, 1.0)
    assert not StatsPublisher._holds(({"gpu_util": "-1.0"}, 0.0), 40.0, 1.0)
    assert StatsPublisher._holds(({"gpu_util": "-1.0"}, 0.0), None, 1.0)
    assert not StatsPublisher._holds(({"gpu_util": "-1.0"}, 0.0), None, STATS_REFRESH_S)
    assert StatsPublisher._holds(None, 30.0, 1.0)  # never measured: nothing stored to hold
