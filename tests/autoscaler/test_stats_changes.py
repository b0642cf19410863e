"""The autoscaler's stats reader reads again only the reports that changed (the namespace's change stream), so a
read of many idle models' stats costs the same as of a few; it still sees every change, a withdrawal, a dead
worker's report going stale, and reads everything afresh when the stream lost entries it had not read."""

from __future__ import annotations

import time
from typing import Any

import pytest

from autoscaler.stats import ServiceStatsReader, publish_service_stats
from schemas import Names
from schemas.stats import withdraw_service_stats

pytestmark = pytest.mark.integration


async def _commands(redis: Any) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}


async def _cost(redis: Any, reader: ServiceStatsReader, models: list[str]) -> dict[str, int]:
    """The commands of one ``read_many`` by command."""
    before = await _commands(redis)
    await reader.read_many(models)
    after = await _commands(redis)
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


async def _publish(redis: Any, names: Names, models: list[str], worker: str, service_s: float) -> None:
    now = time.time() * 1000
    for model in models:
        await publish_service_stats(redis, names, model, worker, service_s, 4.0, 10, at_ms=now)


@pytest.mark.parametrize("count", [5, 60])
async def test_an_idle_read_costs_the_same_for_few_and_many_reporting_models(
    redis_client: Any, names: Names, count: int
) -> None:
    models = [f"m{i:02d}" for i in range(count)]
    await _publish(redis_client, names, models, "w1", 0.01)
    await redis_client.zadd(names.workers_key, {"w1": int(time.time() * 1000)})
    reader = ServiceStatsReader(redis_client, names, max_age_s=15.0)
    first = await reader.read_many(models)
    assert all(s.replicas_reporting == 1 and s.per_replica_throughput == pytest.approx(100.0) for s in first.values())
    # Nothing changed: the live workers and the change stream, whatever the model count.
    assert await _cost(redis_client, reader, models) == {"zrangebyscore": 1, "xrange": 1}
    # One report changed: that one report is read again.
    await _publish(redis_client, names, models[:1], "w1", 0.02)
    assert await _cost(redis_client, reader, models) == {"zrangebyscore": 1, "xrange": 1, "hgetall": 1}
    assert (await reader.read(models[0])).per_replica_throughput == pytest.approx(50.0)


async def test_changes_withdrawals_and_stale_reports_are_seen(redis_client: Any, names: Names) -> None:
    now = time.time() * 1000
    await redis_client.zadd(names.workers_key, {"w1": int(now), "w2": int(now)})
    await _publish(redis_client, names, ["m"], "w1", 0.01)
    reader = ServiceStatsReader(redis_client, names, max_age_s=15.0)
    assert (await reader.read("m")).replicas_reporting == 1

    await _publish(redis_client, names, ["m"], "w2", 0.02)  # a new reporter of a model already read
    stats = await reader.read("m")
    assert stats.replicas_reporting == 2 and stats.per_replica_throughput == pytest.approx(75.0)

    await withdraw_service_stats(redis_client, names, ["m"], "w2")  # it stopped serving the model
    assert (await reader.read("m")).replicas_reporting == 1

    # w1's report is old and its heartbeat stops: it no longer counts, and it leaves the model's index.
    await publish_service_stats(redis_client, names, "m", "w1", 0.01, 4.0, 10, at_ms=now - 600_000)
    assert (await reader.read("m")).replicas_reporting == 1  # still live
    await redis_client.zadd(names.workers_key, {"w1": int(now - 600_000)})
    assert (await reader.read("m")).replicas_reporting == 0
    assert await redis_client.zscore(names.stats_index_key("m"), "w1") is None


async def test_a_gap_in_the_change_stream_reads_every_report_afresh(redis_client: Any, names: Names) -> None:
    await redis_client.zadd(names.workers_key, {"w1": int(time.time() * 1000)})
    await _publish(redis_client, names, ["a", "b"], "w1", 0.01)
    reader = ServiceStatsReader(redis_client, names, max_age_s=15.0)
    assert (await reader.read_many(["a", "b"]))["b"].per_replica_throughput == pytest.approx(100.0)
    # A change whose entry is lost, with every entry the reader took in (a trim, a Redis without the stream).
    await _publish(redis_client, names, ["b"], "w1", 0.02)
    await redis_client.delete(names.stats_changes_key)
    assert (await reader.read_many(["a", "b"]))["b"].per_replica_throughput == pytest.approx(50.0)
    # In step again: the next change is taken in as usual.
    await _publish(redis_client, names, ["a"], "w1", 0.04)
    assert (await reader.read_many(["a", "b"]))["a"].per_replica_throughput == pytest.approx(25.0)
