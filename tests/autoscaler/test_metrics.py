"""Prometheus export of loads and decisions."""

from __future__ import annotations

from autoscaler import AutoscalerMetrics, AutoscalerSettings, ModelLoad, PartitionLoad, ScalingPolicy, ServiceStats


def test_observe_renders_every_metric() -> None:
    load = ModelLoad("m", "t", "g", (PartitionLoad(0, 500, 100, 400, arrival_rate=3.0, completion_rate=2.0),), at=0.0)
    decision = ScalingPolicy(AutoscalerSettings()).decide("m", load, ServiceStats(), 0, now=0.0)
    metrics = AutoscalerMetrics()
    metrics.observe(load, ServiceStats(), decision)
    text = metrics.render().decode()
    for line in (
        'fleet_autoscaler_lag{model="m"} 400.0',
        'fleet_autoscaler_arrival_rate{model="m"} 3.0',
        'fleet_autoscaler_completion_rate{model="m"} 2.0',
        'fleet_autoscaler_replicas_desired{model="m"} 1.0',
        'fleet_autoscaler_replicas_actual{model="m"} 0.0',
        'fleet_autoscaler_partition_cap_binding{model="m"} 1.0',
        'fleet_autoscaler_decisions_total{direction="up",model="m"} 1.0',
    ):
        assert line in text, line
