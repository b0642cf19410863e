"""The autoscaler: scales each model's workers on measured Kafka lag, arrival and service rates.

`LagCollector` measures (correctly on Apache Kafka and on the local broker), `ServiceStatsReader` reads
what workers publish, `ScalingPolicy` decides (pure), `Autoscaler` runs the loop against a `Backend`.
"""

from .collector import LagCollector
from .controller import Autoscaler, Backend, LoadSource, PinSource, StatsSource
from .errors import AutoscalerError, BackendError, CollectorError, StatsError
from .keys import pins_key, stats_index_key, stats_key
from .metrics import AutoscalerMetrics
from .overrides import PinStore
from .policy import Decision, Direction, ScalingPolicy
from .settings import AutoscalerSettings
from .signals import ModelLoad, PartitionLoad, ServiceStats, ewma
from .stats import ServiceStatsReader, WorkerReport, aggregate_service_stats, publish_service_stats

__all__ = [
    "Autoscaler",
    "AutoscalerError",
    "AutoscalerMetrics",
    "AutoscalerSettings",
    "Backend",
    "BackendError",
    "CollectorError",
    "Decision",
    "Direction",
    "LagCollector",
    "LoadSource",
    "ModelLoad",
    "PartitionLoad",
    "PinSource",
    "PinStore",
    "ScalingPolicy",
    "ServiceStats",
    "ServiceStatsReader",
    "StatsError",
    "StatsSource",
    "WorkerReport",
    "aggregate_service_stats",
    "ewma",
    "pins_key",
    "publish_service_stats",
    "stats_index_key",
    "stats_key",
]
