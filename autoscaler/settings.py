"""Settings of the autoscaler process, read from ``FLEET_AUTOSCALER_*`` (plus the shared fleet settings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schemas import FleetSettings, SettingsError, doc, load

#: Prefix of every autoscaler variable.
ENV_PREFIX = "FLEET_AUTOSCALER_"


@dataclass(frozen=True)
class AutoscalerSettings:
    """Policy knobs of the autoscaler; every duration is in seconds, every rate in requests per second."""

    models: tuple[str, ...] = doc("Models to scale (comma list); empty scales every registered model.", ())
    interval_s: float = doc("Seconds between two measure-and-decide rounds.", 1.0)
    target_drain_s: float = doc("A backlog should be worked off within this many seconds.", 10.0)
    min_replicas: int = doc("Fewest workers per model (0 allows scale to zero).", 0)
    max_replicas: int = doc("Most workers per model (the topic's partition count caps it too).", 16)
    default_replica_throughput: float = doc(
        "Requests/s one worker is assumed to complete until workers publish a measurement.", 20.0
    )
    scale_up_stabilization_s: float = doc("Scale up to the lowest recommendation of this window (0: at once).", 0.0)
    scale_down_stabilization_s: float = doc("Scale down only to the highest recommendation of this window.", 30.0)
    idle_to_zero_s: float = doc("Seconds without arrivals and without lag before a model scales to zero.", 60.0)
    activation_lag: int = doc("Lag (records) that wakes a model scaled to zero.", 1)
    latency_p95_target_ms: float = doc("Scale up while workers' p95 latency exceeds this (0: off).", 0.0)
    gpu_util_target: float = doc("Scale up while mean GPU utilization (percent) exceeds this (0: off).", 0.0)
    queue_depth_target: int = doc("Requests buffered inside one worker that trigger a scale-up (0: off).", 0)
    smoothing_half_life_s: float = doc("Half-life of the EWMA that smooths arrival and completion rates.", 5.0)
    stats_max_age_s: float = doc("Worker service stats older than this are ignored (worker gone).", 15.0)
    pinned: tuple[str, ...] = doc("Static overrides as model=replicas (comma list); a pinned model is not scaled.", ())
    fleet: FleetSettings = doc("Namespace, Kafka and Redis of the fleet.", prefix="", default_factory=FleetSettings)

    def __post_init__(self) -> None:
        for name in ("interval_s", "target_drain_s", "default_replica_throughput", "smoothing_half_life_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        for name in ("scale_up_stabilization_s", "scale_down_stabilization_s", "idle_to_zero_s", "stats_max_age_s"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0")
        for name in ("latency_p95_target_ms", "gpu_util_target", "queue_depth_target"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0 (0 turns the trigger off)")
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise SettingsError(
                f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got "
                f"{self.min_replicas}..{self.max_replicas}"
            )
        if self.activation_lag < 1:
            raise SettingsError("activation_lag must be >= 1")
        self.pins()  # validates the pinned entries

    def pins(self) -> dict[str, int]:
        """The static ``pinned`` entries as {model: replicas}."""
        result: dict[str, int] = {}
        for entry in self.pinned:
            model, sep, raw = entry.partition("=")
            try:
                replicas = int(raw)
            except ValueError:
                replicas = -1
            if not sep or not model or replicas < 0:
                raise SettingsError(f"pinned entry {entry!r} must be model=replicas with replicas >= 0")
            result[model.strip()] = replicas
        return result

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AutoscalerSettings:
        """Settings from ``FLEET_AUTOSCALER_*``, ``FLEET_NAMESPACE``, ``FLEET_KAFKA_*`` and ``FLEET_REDIS_*``."""
        return load(cls, env, ENV_PREFIX)
