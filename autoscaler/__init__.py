"""The autoscaler: scales each model's workers on measured Kafka lag, arrival and service rates.

`LagCollector` measures (correctly on Apache Kafka and on the local broker), `ServiceStatsReader` reads
what workers publish, `ScalingPolicy` decides (pure), `Autoscaler` runs the loop against a `Backend`
(`LocalProcessBackend` or `KubernetesBackend`), `InventoryPublisher` reports the GPUs, `DecisionStore`
records each round's decisions for ``fleet status``, and `AutoscalerService` wires it all together
(``python -m autoscaler``).
"""

from .backends import KubernetesBackend, LocalProcessBackend, LocalWorker, WorkerExit, WorkerPhase
from .collector import LagCollector
from .controller import Autoscaler, Backend, DecisionSink, LoadSource, PinSource, StatsSource
from .decisions import DecisionRecord, DecisionStore
from .errors import AutoscalerError, BackendError, CollectorError, StatsError
from .inventory import GpuInfo, GpuInventory, InventoryPublisher, publish_inventory, read_gpus, read_inventory
from .keys import decision_key, inventory_index_key, inventory_key, pins_key, stats_index_key, stats_key
from .metrics import AutoscalerMetrics
from .overrides import PinStore
from .policy import Decision, Direction, ScalingPolicy
from .service import AutoscalerService, make_backend
from .settings import AutoscalerSettings
from .signals import ModelLoad, PartitionLoad, ServiceStats, ewma
from .stats import ServiceStatsReader, WorkerReport, aggregate_service_stats, publish_service_stats

__all__ = [
    "Autoscaler",
    "AutoscalerError",
    "AutoscalerMetrics",
    "AutoscalerService",
    "AutoscalerSettings",
    "Backend",
    "BackendError",
    "CollectorError",
    "Decision",
    "DecisionRecord",
    "DecisionSink",
    "DecisionStore",
    "Direction",
    "GpuInfo",
    "GpuInventory",
    "InventoryPublisher",
    "KubernetesBackend",
    "LagCollector",
    "LoadSource",
    "LocalProcessBackend",
    "LocalWorker",
    "ModelLoad",
    "PartitionLoad",
    "PinSource",
    "PinStore",
    "ScalingPolicy",
    "ServiceStats",
    "ServiceStatsReader",
    "StatsError",
    "StatsSource",
    "WorkerExit",
    "WorkerPhase",
    "WorkerReport",
    "aggregate_service_stats",
    "decision_key",
    "ewma",
    "inventory_index_key",
    "inventory_key",
    "make_backend",
    "pins_key",
    "publish_inventory",
    "publish_service_stats",
    "read_gpus",
    "read_inventory",
    "stats_index_key",
    "stats_key",
]
