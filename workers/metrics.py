"""Prometheus metrics of a worker, in Triton's vocabulary, in a registry of its own.

``fleet_worker_inference_count_total / fleet_worker_execution_count_total`` is the mean batch size
(requests per model execution). The HTTP endpoint runs only when ``metrics_port > 0``; it answers the
OpenMetrics format, where ``fleet_worker_request_duration_seconds`` carries trace ids as exemplars (tracing
on), when the scraper asks for it in its ``Accept`` header, the Prometheus text format otherwise.

GPU utilization and memory come from NVML at scrape time (``common.gpu``), one series per GPU the
worker's NVML sees, labelled ``device="cuda:N"``; without NVIDIA GPUs (CPU workers) those families are
exported with no samples.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.gpu import GpuStats, gpu_stats

log = logging.getLogger("fleet.workers")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class GpuCollector(Collector):
    """NVML utilization and memory of each visible GPU, read when scraped (nothing on a machine without one)."""

    def __init__(self, source: Callable[[], Sequence[GpuStats]] = gpu_stats) -> None:
        self._source = source

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._families(self._source())

    @staticmethod
    def _families(stats: Sequence[GpuStats] = ()) -> list[GaugeMetricFamily]:
        labels = ["device", "name"]
        util = GaugeMetricFamily(
            "fleet_worker_gpu_utilization_ratio",
            "Fraction of the last NVML sample period a kernel ran on the GPU (0-1).",
            labels=labels,
        )
        used = GaugeMetricFamily("fleet_worker_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=labels)
        total = GaugeMetricFamily("fleet_worker_gpu_memory_total_bytes", "GPU memory in all (NVML).", labels=labels)
        for stat in stats:
            values = [f"cuda:{stat.index}", stat.name]
            util.add_metric(values, stat.utilization / 100.0)
            used.add_metric(values, float(stat.memory_used))
            total.add_metric(values, float(stat.memory_total))
        return [util, used, total]


class WorkerMetrics:
    """Counters and histograms of one worker."""

    def __init__(self, gpus: Callable[[], Sequence[GpuStats]] = gpu_stats) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model", "version")
        self.success = Counter(
            "fleet_worker_request_success", "Requests answered with outputs.", labels, registry=self.registry
        )
        self.failure = Counter(
            "fleet_worker_request_failure",
            "Requests answered with an error (or dead-lettered), by code.",
            (*labels, "code"),
            registry=self.registry,
        )
        self.retries = Counter(
            "fleet_worker_request_retries",
            "Requests re-published for another try after a transient model failure.",
            labels,
            registry=self.registry,
        )
        self.lane_requests = Counter(
            "fleet_worker_lane_requests",
            "Records taken into rounds, by lane (interactive, bulk).",
            ("model", "lane"),
            registry=self.registry,
        )
        self.inference_count = Counter(
            "fleet_worker_inference_count", "Requests run through a model.", labels, registry=self.registry
        )
        self.execution_count = Counter(
            "fleet_worker_execution_count", "Model executions (batches).", labels, registry=self.registry
        )
        self.queue_seconds = Histogram(
            "fleet_worker_queue_seconds",
            "Request creation to start of compute.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "fleet_worker_compute_seconds",
            "Model execution time of one batch.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "fleet_worker_batch_size",
            "Requests per model execution.",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "fleet_worker_request_duration_seconds",
            "Request creation (at the gateway or producer) to its reply delivered by the worker.",
            labels,
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(GpuCollector(gpus))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def observe_batch(self, model: str, version: str, requests: int, compute_s: float, queue_s: list[float]) -> None:
        """Record one model execution of ``requests`` requests."""
        self.inference_count.labels(model, version).inc(requests)
        self.execution_count.labels(model, version).inc()
        self.batch_size.labels(model, version).observe(requests)
        self.compute_seconds.labels(model, version).observe(compute_s)
        queue = self.queue_seconds.labels(model, version)
        for value in queue_s:
            queue.observe(max(0.0, value))

    def observe_delivered(
        self,
        model: str,
        latencies: Iterable[tuple[str, float]],
        exemplars: Sequence[dict[str, str] | None] = (),
    ) -> None:
        """Record ``(version, seconds)`` from request creation to reply delivery for each answered request;
        ``exemplars`` (with tracing on, ``common.tracing.exemplars``) has each request's trace id, in order."""
        for index, (version, seconds) in enumerate(latencies):
            exemplar = exemplars[index] if index < len(exemplars) else None
            self.request_duration.labels(model, version).observe(max(0.0, seconds), exemplar)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Start the /metrics HTTP endpoint on ``port``."""
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", addr, port)

    @property
    def port(self) -> int | None:
        """The bound port of the endpoint, None when it is not running."""
        return None if self._server is None else int(self._server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP endpoint (idempotent)."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)
