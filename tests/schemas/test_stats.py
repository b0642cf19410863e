"""The worker service stats record (schemas.stats) and the key names the autoscaler shares with workers."""

from __future__ import annotations

import time
from typing import Any

from schemas import Names, WorkerReport, publish_worker_stats, withdraw_service_stats


def test_stats_and_autoscaler_keys() -> None:
    names = Names("ns1")
    assert names.stats_index_key("m") == "ns1:{ns1.stats.m}:workers"
    assert names.stats_key("m", "w1") == "ns1:{ns1.stats.m}:worker:w1"
    assert names.pins_key == "ns1:{ns1.autoscaler}:pins"
    assert names.decision_key("m") == "ns1:{ns1.decision.m}:decision"
    assert names.inventory_index_key == "ns1:{ns1.inventory}:hosts"
    assert names.inventory_key("h") == "ns1:{ns1.inventory}:host:h"


def test_report_fields_round_trip() -> None:
    report = WorkerReport("w", 0.002, 4.5, 10, 12.5, None, 3, 1000.0)
    raw = {k.encode(): v.encode() for k, v in report.to_fields().items()}
    assert raw[b"gpu_util"] == b"-1.0"
    assert WorkerReport.from_hash("w", raw) == report
    assert WorkerReport.from_hash("w", {**raw, b"unknown_field": b"x"}) == report  # new fields are ignored
    assert WorkerReport.from_hash("w", {**raw, b"service_s": b"nan"}) is None
    assert WorkerReport.from_hash("w", {b"ts_ms": b"1"}) is None


async def test_publish_many_models_then_withdraw(redis_client: Any, names: Names) -> None:
    now = float(int(time.time() * 1000))  # stored as whole ms
    reports = {m: WorkerReport("w1", 0.01, 2.0, 5, 3.0, 50.0, 0, now) for m in ("a", "b")}
    await publish_worker_stats(redis_client, names, reports, ttl_s=20)
    for model in ("a", "b"):
        raw = await redis_client.hgetall(names.stats_key(model, "w1"))
        assert WorkerReport.from_hash("w1", raw) == reports[model]
        assert await redis_client.zscore(names.stats_index_key(model), "w1") == int(now)
        assert 0 < await redis_client.ttl(names.stats_key(model, "w1")) <= 20
    await withdraw_service_stats(redis_client, names, ["a", "b"], "w1")
    assert not await redis_client.exists(names.stats_key("a", "w1"), names.stats_key("b", "w1"))
    assert await redis_client.zscore(names.stats_index_key("a"), "w1") is None
