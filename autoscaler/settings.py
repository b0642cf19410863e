"""Settings of the autoscaler process, read from ``FLEET_AUTOSCALER_*`` (plus the shared fleet settings)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from schemas import FleetSettings, SettingsError, doc, load

#: Prefix of every autoscaler variable.
ENV_PREFIX = "FLEET_AUTOSCALER_"

#: Worker backends `python -m autoscaler` can drive.
BACKENDS = ("local", "kubernetes")

_K8S_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


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
    backend: str = doc("Who runs the workers: local (processes on this machine) or kubernetes (Deployments).", "local")
    k8s_namespace: str = doc("Kubernetes namespace of the worker Deployments (kubernetes backend).", "default")
    k8s_deployment_template: str = doc(
        "Name of a model's worker Deployment; {model} is replaced by the model name (kubernetes backend).",
        "fleet-worker-{model}",
    )
    drain_timeout_s: float = doc(
        "Local backend: seconds a stopping worker may drain after SIGTERM before it is killed.", 60.0
    )
    ready_timeout_s: float = doc("Local backend: seconds a new worker may take to report ready (then logged).", 120.0)
    log_dir: str = doc("Local backend: folder of the worker log files (empty: a folder in the temp dir).", "")
    gpus: int = doc("GPUs the local backend hands out (-1: count them with NVML; 0: none).", -1)
    worker_metrics_ports: str = doc(
        "Local backend: port range FIRST-LAST handed out, one per worker, for its /metrics; Prometheus finds them "
        "at /sd/workers of the metrics port (HTTP service discovery). Empty: spawned workers serve no metrics.",
        "",
    )
    worker_metrics_host: str = doc(
        "Local backend: the host name Prometheus reaches the spawned workers by (in Compose, the service name).",
        "127.0.0.1",
    )
    inventory_interval_s: float = doc("Seconds between two GPU inventory reports to Redis.", 5.0)
    metrics_port: int = doc("TCP port of the Prometheus /metrics endpoint (0 = off).", 0)
    placement: bool = doc(
        "Scale by placement instead of FLEET_AUTOSCALER_BACKEND: each round, assign every model's desired "
        "replicas to running workers that follow an assignment (FLEET_WORKER_FOLLOW_ASSIGNMENT) by labels and room.",
        False,
    )
    placement_size_factor: float = doc(
        "Placement: size of a model never measured = its artifact size x this (as FLEET_WORKER_SIZE_FACTOR).", 3.0
    )
    placement_full_round_s: float = doc(
        "Placement: a round whose inputs (decisions, registry, live workers and their assignments and resident "
        "models) did not change keeps the last outcome; the rules run at least this often (0: every round).",
        30.0,
    )
    quiet_probe_s: float = doc(
        "Seconds between two log-end probes of a quiet partition (no lag, nothing arriving) of a model that has "
        "workers (they consume it anyway); a model at zero and any partition with lag or arrivals is probed every "
        "round. At most interval_s: every round.",
        5.0,
    )
    wake_interval_s: float = doc(
        "For pool workers with dormant partitions (FLEET_WORKER_POOL_DORMANT_AFTER_S): name on Redis pub/sub a "
        "partition whose records arrived while its committed offset stayed (records from raw Kafka producers, "
        "which send no note), at most once per partition per this many seconds, so a worker fetches it at once. "
        "Seen within a probe of the partition (FLEET_AUTOSCALER_QUIET_PROBE_S). While on, a topic not found yet (a "
        "bulk-lane topic) is looked for when a note names it, else every 30 s (5 s when off): turn it on where the "
        "gateways send notes too (FLEET_GATEWAY_WAKE_INTERVAL_S). 0 = off.",
        0.0,
    )
    pool: bool = doc(
        "Run a pool of multi-model workers (FLEET_WORKER_MODE=pool, following their assignment) through "
        "FLEET_AUTOSCALER_BACKEND, sized from the measured work between POOL_MIN_WORKERS and POOL_MAX_WORKERS, "
        "and place every model's replicas on it (implies PLACEMENT).",
        False,
    )
    pool_min_workers: int = doc("Pool: fewest pool workers (0 allows scale to zero: a request wakes one).", 1)
    pool_max_workers: int = doc("Pool: most pool workers.", 4)
    pool_worker_memory_mb: float = doc(
        "Pool: MB of models one pool worker may hold (its FLEET_WORKER_MEMORY_BUDGET_MB x (1 + overcommit)); the "
        "pool grows until the wanted replicas fit. 0: models' sizes do not size the pool.",
        0.0,
    )
    pool_standby: int = doc(
        "Pool, local backend: pool worker processes kept started ahead (imports done, not yet members of the "
        "fleet), so a scale-up activates one instead of starting a process; each costs one idle process. 0: none.",
        1,
    )
    k8s_pool_deployment: str = doc("Pool, kubernetes backend: the pool workers' Deployment.", "fleet-worker-pool")
    leader_election: bool = doc(
        "Only the autoscaler holding a lease in Redis scales and places; others stand by (several replicas = HA).",
        True,
    )
    leader_lease_s: float = doc(
        "Leader lease: renewed every third of it; a standby takes over this long after a leader dies.", 10.0
    )
    fleet: FleetSettings = doc("Namespace, Kafka and Redis of the fleet.", prefix="", default_factory=FleetSettings)

    def __post_init__(self) -> None:
        self._check_backend_settings()
        for name in (
            "interval_s",
            "target_drain_s",
            "default_replica_throughput",
            "smoothing_half_life_s",
            "leader_lease_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        for name in (
            "scale_up_stabilization_s",
            "scale_down_stabilization_s",
            "idle_to_zero_s",
            "stats_max_age_s",
            "placement_full_round_s",
            "quiet_probe_s",
        ):
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
        if self.pool_min_workers < 0 or self.pool_max_workers < 1 or self.pool_min_workers > self.pool_max_workers:
            raise SettingsError(
                f"need 0 <= pool_min_workers <= pool_max_workers and pool_max_workers >= 1, got "
                f"{self.pool_min_workers}..{self.pool_max_workers}"
            )
        if self.pool_standby < 0:
            raise SettingsError("pool_standby must be >= 0 (0: no standby)")
        if self.pool_worker_memory_mb < 0:
            raise SettingsError("pool_worker_memory_mb must be >= 0 (0: sizes do not count)")
        if self.placement_size_factor < 1:
            raise SettingsError("placement_size_factor must be >= 1")
        if self.activation_lag < 1:
            raise SettingsError("activation_lag must be >= 1")
        self.pins()  # validates the pinned entries

    def _check_backend_settings(self) -> None:
        if self.backend not in BACKENDS:
            raise SettingsError(f"backend {self.backend!r} must be one of {', '.join(BACKENDS)}")
        if not _K8S_NAMESPACE.match(self.k8s_namespace):
            raise SettingsError(f"k8s_namespace {self.k8s_namespace!r} is not a valid Kubernetes namespace")
        if "{model}" not in self.k8s_deployment_template:
            raise SettingsError("k8s_deployment_template must contain {model}")
        for name in ("drain_timeout_s", "ready_timeout_s", "inventory_interval_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        if self.gpus < -1:
            raise SettingsError("gpus must be -1 (detect), 0 or a GPU count")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"metrics_port {self.metrics_port} is not in 0..65535")
        self.worker_metrics_port_range()  # validates it

    def worker_metrics_port_range(self) -> range | None:
        """``worker_metrics_ports`` as a range (None when empty)."""
        text = self.worker_metrics_ports.strip()
        if not text:
            return None
        first, sep, last = text.partition("-")
        try:
            ports = range(int(first), int(last if sep else first) + 1)
        except ValueError:
            ports = range(0)
        if not ports or ports.start < 1 or ports.stop > 65536:
            raise SettingsError(f"worker_metrics_ports {text!r} must be FIRST-LAST within 1..65535, FIRST <= LAST")
        return ports

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
