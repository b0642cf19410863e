"""Worker metrics: Triton-style names in a private registry, served over HTTP only when asked."""

from __future__ import annotations

import asyncio
import urllib.request

from workers.metrics import WorkerMetrics


def test_mean_batch_size_is_inferences_over_executions() -> None:
    metrics = WorkerMetrics()
    metrics.observe_batch("m", "1", 8, 0.002, [0.001] * 8)
    metrics.observe_batch("m", "1", 4, 0.001, [0.002] * 4)
    metrics.failure.labels("m", "1", "INVALID_INPUT").inc()
    sample = metrics.registry.get_sample_value
    labels = {"model": "m", "version": "1"}
    assert sample("fleet_worker_inference_count_total", labels) == 12
    assert sample("fleet_worker_execution_count_total", labels) == 2
    assert sample("fleet_worker_batch_size_count", labels) == 2
    assert sample("fleet_worker_queue_seconds_count", labels) == 12
    assert sample("fleet_worker_request_failure_total", {**labels, "code": "INVALID_INPUT"}) == 1
    assert WorkerMetrics().registry is not metrics.registry  # two workers in one process do not clash


async def test_metrics_endpoint() -> None:
    metrics = WorkerMetrics()
    assert metrics.port is None
    metrics.serve(0, addr="127.0.0.1")
    try:
        metrics.success.labels("m", "1").inc(3)
        url = f"http://127.0.0.1:{metrics.port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        assert 'fleet_worker_request_success_total{model="m",version="1"} 3.0' in body
    finally:
        metrics.close()
        metrics.close()
    assert metrics.port is None
