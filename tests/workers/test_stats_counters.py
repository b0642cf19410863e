"""The cumulative counters behind Triton's model statistics: counted by ModelStats, carried by WorkerReport."""

from __future__ import annotations

from schemas.stats import WorkerReport
from workers.stats import ModelStats


def test_batches_add_up_and_survive_the_report_hash() -> None:
    stats = ModelStats(clock=lambda: 100.0)
    stats.observe_batch(4, compute_s=0.002, queue_ms=6.0)
    stats.observe_batch(1, compute_s=0.001, queue_ms=0.5)
    stats.observe_round(6, 0.01, [1.0] * 6)  # one more request answered (with an error): completed, not succeeded
    report = stats.report("w1", None, 1_000.0)
    assert (report.executions, report.succeeded, report.completed) == (2, 5, 6)
    assert report.queue_total_ms == 6.5
    assert abs(report.compute_total_ms - (4 * 2.0 + 1 * 1.0)) < 1e-9
    assert report.last_inference_ms > 0
    raw = {k.encode(): v.encode() for k, v in report.to_fields().items()}
    read = WorkerReport.from_hash("w1", raw)
    assert read is not None and read.last_inference_ms == int(report.last_inference_ms)  # whole ms on the wire
    assert read.executions == 2 and read.succeeded == 5 and read.compute_total_ms == report.compute_total_ms


def test_a_report_without_the_counters_reads_as_zero() -> None:
    """Reports written before the counters existed (a rolling upgrade) still parse."""
    raw = {b"service_s": b"0.01", b"ts_ms": b"5"}
    report = WorkerReport.from_hash("w1", raw)
    assert report is not None and (report.executions, report.succeeded, report.compute_total_ms) == (0, 0, 0.0)
