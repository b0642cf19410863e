"""Prometheus metrics of model residency (loads, evictions, reloads, resident bytes, artifact cache).

Registered in the worker's own registry (``WorkerMetrics.registry``), kept apart from the request
metrics of `workers.metrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Fine buckets around the 100 ms reload target (the benchmark reads percentiles from them).
_RELOAD_BUCKETS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class ResidencyMetrics:
    """Counters, a histogram and gauges of one worker's resident models."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("model", "version")
        self.loads = Counter(
            "fleet_worker_model_loads", "Model versions loaded into memory (first loads and reloads).", labels,
            registry=registry,
        )  # fmt: skip
        self.evictions = Counter(
            "fleet_worker_model_evictions",
            "Model versions unloaded to make room for another (least recently used first).",
            labels,
            registry=registry,
        )
        self.reload_seconds = Histogram(
            "fleet_worker_model_reload_seconds",
            "Reload of an evicted model version: local disk cache (sha256 checked) to a loaded runtime.",
            labels,
            buckets=_RELOAD_BUCKETS,
            registry=registry,
        )
        self.lookups = Counter(
            "fleet_worker_residency_lookups",
            "Requests whose model was resident (result=hit) or had to be loaded first (result=miss).",
            ("result",),
            registry=registry,
        )
        self.cache = Counter(
            "fleet_worker_artifact_cache_requests",
            "Artifact fetches from the local disk cache: hit, miss (copied in) or corrupt (failed sha256, refetched).",
            ("result",),
            registry=registry,
        )
        self.resident_bytes = Gauge(
            "fleet_worker_resident_bytes", "Bytes of the model versions resident now.", registry=registry
        )
        self.budget_bytes = Gauge(
            "fleet_worker_memory_budget_bytes", "Memory budget for resident models (-1 = unlimited).", registry=registry
        )
