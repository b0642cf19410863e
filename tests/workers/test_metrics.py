"""Worker metrics: Triton-style names in a private registry, served over HTTP only when asked."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client import generate_latest

from common.gpu import GpuStats
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


def test_request_duration_per_model_and_version() -> None:
    metrics = WorkerMetrics(gpus=list)
    metrics.observe_delivered("m", [("1", 0.004), ("2", 0.2), ("1", -1.0)])
    sample = metrics.registry.get_sample_value
    assert sample("fleet_worker_request_duration_seconds_count", {"model": "m", "version": "1"}) == 2
    assert sample("fleet_worker_request_duration_seconds_sum", {"model": "m", "version": "1"}) == 0.004
    assert sample("fleet_worker_request_duration_seconds_bucket", {"model": "m", "version": "2", "le": "0.1"}) == 0


def test_gpu_gauges_from_nvml_stats() -> None:
    stats = [GpuStats(0, "H100", 37.0, 10 * 2**30, 80 * 2**30), GpuStats(1, "H100", 0.0, 0, 80 * 2**30)]
    metrics = WorkerMetrics(gpus=lambda: stats)
    sample = metrics.registry.get_sample_value
    labels = {"device": "cuda:0", "name": "H100"}
    assert sample("fleet_worker_gpu_utilization_ratio", labels) == 0.37
    assert sample("fleet_worker_gpu_memory_used_bytes", labels) == 10 * 2**30
    assert sample("fleet_worker_gpu_memory_total_bytes", {"device": "cuda:1", "name": "H100"}) == 80 * 2**30


def test_no_gpu_means_families_without_samples() -> None:
    body = generate_latest(WorkerMetrics(gpus=list).registry).decode()
    assert "# TYPE fleet_worker_gpu_utilization_ratio gauge" in body
    assert "\nfleet_worker_gpu_" not in body
