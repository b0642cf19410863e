"""Prometheus metrics of the autoscaler, in its own CollectorRegistry.

A model's gauges are set only when their values changed (the control loop observes only the models it decided
again, and a decision again with the same figures sets nothing): an idle model costs nothing per round.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from .policy import Decision
from .signals import ModelLoad, ServiceStats


class AutoscalerMetrics:
    """Measured load, desired and actual workers, and decision counts, per model."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.lag = Gauge(
            "fleet_autoscaler_lag", "Records not yet completed (log end - committed).", ["model"], registry=r
        )
        self.arrival_rate = Gauge(
            "fleet_autoscaler_arrival_rate",
            "Records/s produced to the model's topic (smoothed).",
            ["model"],
            registry=r,
        )
        self.completion_rate = Gauge(
            "fleet_autoscaler_completion_rate",
            "Records/s committed by the model's workers (smoothed).",
            ["model"],
            registry=r,
        )
        self.per_replica_throughput = Gauge(
            "fleet_autoscaler_per_replica_throughput",
            "Requests/s one worker completes (as used by the policy).",
            ["model"],
            registry=r,
        )
        self.partitions = Gauge(
            "fleet_autoscaler_partitions", "Partitions of the model's topic.", ["model"], registry=r
        )
        self.desired = Gauge("fleet_autoscaler_replicas_desired", "Workers the policy wants.", ["model"], registry=r)
        self.actual = Gauge("fleet_autoscaler_replicas_actual", "Workers the backend reports.", ["model"], registry=r)
        self.capped = Gauge(
            "fleet_autoscaler_partition_cap_binding",
            "1 when the partition count limits the desired workers.",
            ["model"],
            registry=r,
        )
        self.decisions = Counter(
            "fleet_autoscaler_decisions",
            "Scaling decisions by direction (up, down, none).",
            ["model", "direction"],
            registry=r,
        )
        self._gauges: dict[str, tuple[Gauge, ...]] = {}  # per model: its children of the per-model gauges
        self._values: dict[str, tuple[float | None, ...]] = {}  # per model: the values its gauges were last set to
        self._counters: dict[tuple[str, str], Counter] = {}  # per (model, direction): its decisions counter
        self.errors = Counter(
            "fleet_autoscaler_errors", "Rounds that failed, by error code.", ["model", "code"], registry=r
        )
        self.leader = Gauge(
            "fleet_autoscaler_leader",
            "1 while this autoscaler holds the leader lease and scales; 0 while it stands by.",
            registry=r,
        )

    def observe(self, load: ModelLoad, stats: ServiceStats, decision: Decision) -> None:
        """Record one round of one model."""
        model = decision.model
        gauges = self._gauges.get(model)
        if gauges is None:  # looking a labelled child up costs more than setting it: once per model
            gauges = self._gauges[model] = tuple(
                g.labels(model)
                for g in (
                    self.lag,
                    self.arrival_rate,
                    self.completion_rate,
                    self.per_replica_throughput,
                    self.partitions,
                    self.desired,
                    self.actual,
                    self.capped,
                )
            )
        throughput = decision.inputs.get("per_replica_throughput")
        values: tuple[float | None, ...] = (
            float(load.lag),
            load.arrival_rate,
            load.completion_rate,
            float(throughput) if isinstance(throughput, int | float) else None,
            float(load.partition_count),
            float(decision.desired),
            float(decision.current),
            1.0 if decision.capped_by_partitions else 0.0,
        )
        last = self._values.get(model)
        if values != last:
            for i, (gauge, value) in enumerate(zip(gauges, values, strict=True)):
                if value is not None and (last is None or last[i] != value):  # None: not given, it keeps its value
                    gauge.set(value)
            self._values[model] = values
        key = (model, decision.direction.value)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.decisions.labels(*key)
        counter.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
