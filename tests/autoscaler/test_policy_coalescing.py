"""Coalesced records (several sync requests in one Kafka record): the policy turns its lag and arrivals, which
count records, into requests with the requests per record the workers measure (pure; no broker)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from autoscaler import ScalingPolicy, ServiceStats, ServiceStatsReader
from autoscaler.stats import aggregate_service_stats
from schemas import Names
from schemas.stats import WorkerReport, publish_worker_stats

from .test_policy import make_load, settings

#: 40 requests/s per worker, drained within 10 s.
_THROUGHPUT = 40.0


def _stats(per_record: float) -> ServiceStats:
    return ServiceStats(replicas_reporting=2, per_replica_throughput=_THROUGHPUT, requests_per_record=per_record)


def test_a_model_whose_records_carry_four_requests_gets_the_replicas_its_request_lag_needs() -> None:
    policy = ScalingPolicy(settings(target_drain_s=10.0))
    # 400 records waiting and 20 records/s arriving, each record carrying 4 requests: 1,600 requests to drain and
    # 80 requests/s to keep up with: 1600 / (40 x 10) + 80 / 40 = 6 workers (1.5 without the ratio).
    decision = policy.decide("m", make_load(lag=400, arrival=20.0), _stats(4.0), current=2, now=0.0)
    assert decision.desired == 6, decision.why()
    assert decision.inputs["requests_per_record"] == 4.0
    assert decision.work == pytest.approx(6.0)
    assert "x 4 requests/record" in decision.reason


@pytest.mark.parametrize("per_record", [0.0, 1.0])
def test_records_of_one_request_or_no_ratio_decide_as_before(per_record: float) -> None:
    decision = ScalingPolicy(settings()).decide(
        "m", make_load(lag=400, arrival=20.0), _stats(per_record), current=2, now=0.0
    )
    assert decision.desired == 2  # 400 / (40 x 10) + 20 / 40 = 1.5
    assert "requests_per_record" not in decision.inputs
    assert decision.reason.startswith("lag 400 / (40/s x 10s) + arrival 20/s / 40/s = 1.50 -> 2")


def test_a_model_at_zero_wakes_as_it_did_whatever_ratio_its_last_workers_reported() -> None:
    load = make_load(lag=400, arrival=20.0)
    woken = ScalingPolicy(settings()).decide("m", load, _stats(4.0), current=0, now=0.0)
    plain = ScalingPolicy(settings()).decide("m", load, _stats(0.0), current=0, now=0.0)
    assert (woken.desired, woken.reason, woken.inputs) == (plain.desired, plain.reason, plain.inputs)


def test_a_pinned_models_work_counts_requests() -> None:
    decision = ScalingPolicy(settings()).decide(
        "m", make_load(arrival=20.0), _stats(4.0), current=1, now=0.0, pinned=1
    )
    assert decision.work == pytest.approx(20.0 * 4 / _THROUGHPUT)


def test_the_ratio_is_the_mean_of_the_workers_that_measured_one() -> None:
    reports = [
        WorkerReport("a", 0.025, 4.0, 10, 0.0, None, 0, 1.0, records=3, requests_per_record=3.0),
        WorkerReport("b", 0.025, 4.0, 10, 0.0, None, 0, 1.0, records=2, requests_per_record=5.0),
        WorkerReport("old", 0.025, 4.0, 10, 0.0, None, 0, 1.0),  # a worker that does not report it
    ]
    assert aggregate_service_stats(reports).requests_per_record == 4.0
    assert aggregate_service_stats(reports[2:]).requests_per_record == 0.0


def test_a_report_without_the_record_fields_reads_as_unknown() -> None:
    fields = WorkerReport("w", 0.02, 2.0, 8, 5.0, None, 0, 1000.0, records=2, requests_per_record=4.0).to_fields()
    parsed = WorkerReport.from_hash("w", {k.encode(): v.encode() for k, v in fields.items()})
    assert parsed is not None and (parsed.records, parsed.requests_per_record) == (2, 4.0)
    old = {k.encode(): v.encode() for k, v in fields.items() if k not in ("records", "rpr")}
    parsed = WorkerReport.from_hash("w", old)
    assert parsed is not None and (parsed.records, parsed.requests_per_record) == (0, 0.0)
    assert WorkerReport.from_hash("w", {**old, b"rpr": b"nan"}) is None


@pytest.mark.integration
async def test_the_autoscaler_reads_the_ratio_beside_a_worker_of_the_previous_release(
    redis_client: Any, names: Names
) -> None:
    now = time.time() * 1000
    new = WorkerReport("new", 1 / _THROUGHPUT, 4.0, 40, 0.0, None, 0, now, records=10, requests_per_record=4.0)
    await publish_worker_stats(redis_client, names, {"m": new})
    old = {k: v for k, v in new.to_fields().items() if k not in ("records", "rpr")}  # it knows neither field
    old_key = names.stats_key("m", "old")
    await redis_client.hset(old_key, mapping=old)
    await redis_client.zadd(names.stats_index_key("m"), {"old": int(now)})

    stats = await ServiceStatsReader(redis_client, names).read("m")
    assert (stats.replicas_reporting, stats.requests_per_record) == (2, 4.0)
    decision = ScalingPolicy(settings()).decide("m", make_load(lag=400, arrival=20.0), stats, current=2, now=0.0)
    assert decision.desired == 6, decision.why()
