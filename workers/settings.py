"""Settings of the worker process, read from ``FLEET_WORKER_*`` (plus the shared fleet settings)."""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from schemas import FleetSettings, SchemaError, SettingsError, check_model_name, doc, load

_WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
PREFIX = "FLEET_WORKER_"


def default_worker_id() -> str:
    """``host-pid-random``: unique per process, so each worker has its own heartbeat hash."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:60].strip("-.") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs: the models it serves, its device, its limits and the fleet's backends."""

    models: tuple[str, ...] = doc(
        "Comma list of the models this worker serves (required unless FLEET_WORKER_FOLLOW_ASSIGNMENT).", ()
    )
    worker_id: str = doc(
        "Identity of this process; names its heartbeat hash (default host-pid-random).",
        default_factory=default_worker_id,
        env="FLEET_WORKER_ID",
    )
    device: str = doc("cpu, cuda, cuda:N or auto (CUDA when available, else CPU).", "auto")
    intra_op_threads: int = doc("Threads a model may use for one batch (ONNX Runtime / torch intra-op).", 1)
    drain_timeout_s: float = doc("On stop, how long the batch in hand may take to finish and be delivered.", 30.0)
    heartbeat_interval_s: float = doc("Seconds between two heartbeats (the hash expires after three).", 2.0)
    max_fetch_records: int = doc("Most records taken from Kafka for one round of batches.", 512)
    idle_fetch_wait_ms: int = doc(
        "Fetch wait after 1 s without records (brokers that do not wake a waiting fetch cost CPU when idle); "
        "0 keeps FLEET_KAFKA_FETCH_MAX_WAIT_MS.",
        50,
    )
    bulk_max_batch: int = doc(
        "Most bulk-lane records in one round: an interactive request waits at most one such round.", 32
    )
    bulk_share: float = doc(
        "While interactive requests flow (one in the last second), the most of the worker's time bulk rounds "
        "take (0-1]; the rest is left idle for the interactive path (on shared CPUs). 1 = all idle capacity.",
        0.5,
    )
    pipeline_depth: int = doc(
        "Rounds of a model in flight at once: while one runs on the model, the next is fetched and decoded and the "
        "replies of the one before are delivered (offsets still committed in order). 1 = one round at a time.",
        2,
    )
    commit_interval_ms: int = doc(
        "Least time between two offset commits of a lane (per-model mode): the offsets of the rounds answered "
        "meanwhile go in one commit (never past a reply not stored; a crash redelivers at most this much more). "
        "0 = a commit per round.",
        100,
    )
    max_sequences: int = doc(
        "Text-generation models: most sequences generated at once (the running batch); more wait in Kafka.", 16
    )
    retry_attempts: int = doc("Tries of a request whose model failed transiently (1 = no retry) before the DLQ.", 3)
    retry_base_ms: float = doc("Backoff before the second try; doubles for each further try.", 200.0)
    retry_max_ms: float = doc("Cap of the retry backoff.", 10_000.0)
    retry_jitter: float = doc("Fraction (0-1) taken at random off each backoff, so retries spread out.", 0.1)
    metrics_port: int = doc("TCP port of the Prometheus /metrics endpoint (0 = off).", 0)
    preload: bool = doc("Load each model's default version at start instead of on its first request.", True)
    memory_budget_mb: float = doc(
        "Memory for resident models, in MB (0 = the free memory of the worker's GPU via NVML, unlimited on a CPU).",
        0.0,
    )
    overcommit_pct: float = doc(
        "The served models' sizes may add up to the budget x (1 + this/100); only what fits the budget is resident.",
        10.0,
    )
    size_factor: float = doc(
        "Size of a model never measured on this fleet = its artifact size x this factor (ONNX Runtime on a CPU "
        "measured ~3x: weights, prepacked copies, arenas).",
        3.0,
    )
    measure_footprint: bool = doc(
        "Measure each loaded model's footprint (RSS or NVML delta) and account it; false: use the registry's size "
        "(measured elsewhere, else artifact x size factor), e.g. on a GPU shared with other processes.",
        True,
    )
    cache_dir: str = doc(
        "Local disk cache of artifacts, keyed by sha256 (default: $XDG_CACHE_HOME or ~/.cache, inference-fleet).",
        "",
    )
    download_timeout_s: float = doc(
        "Artifacts registered by http(s) URL: seconds a download may wait for the server (connect, each read).",
        60.0,
    )
    follow_assignment: bool = doc(
        "Serve the models the placement scheduler assigns (Redis assignment key, polled every heartbeat) instead "
        "of FLEET_WORKER_MODELS (which must then be empty).",
        False,
    )
    mode: str = doc(
        "models: one consumer per served model (two Kafka clients and a thread each); pool: one multiplexed "
        "consumer for every served model (a fixed set of Kafka clients, partitions owned under Redis leases, "
        "models loaded on first use).",
        "models",
    )
    pool_threads: int = doc("Pool mode: model rounds that may run at once (one per model at a time).", 4)
    pool_queue_records: int = doc(
        "Pool mode: records a model may hold in memory per lane; above it its partitions pause so others flow.",
        2048,
    )
    pool_missing_topic_recheck_s: float = doc(
        "Pool mode: seconds before a topic the broker did not have (a bulk topic not created yet: it comes with "
        "the model's first bulk request) is looked for again; its first bulk requests wait up to this long.",
        10.0,
    )
    pool_dormant_after_s: float = doc(
        "Pool mode: a partition with no records for this long is left out of the fetches and swept every "
        "FLEET_WORKER_POOL_DORMANT_SWEEP_MS (for brokers that pay per partition named in a fetch, as the local "
        "stack's does; its first request waits up to a sweep longer). 0 = off: right for Kafka.",
        0.0,
    )
    pool_dormant_sweep_ms: int = doc(
        "Pool mode: milliseconds between two sweeps of the dormant partitions (one fetch naming them).", 500
    )
    labels: tuple[str, ...] = doc(
        "Comma list of labels published for placement (e.g. gpu,onnx); cpu or gpu and the installed frameworks "
        "(onnx, torch) are added.",
        (),
    )
    fleet: FleetSettings = doc("Namespace, Kafka and Redis of the fleet.", prefix="", default_factory=FleetSettings)

    def __post_init__(self) -> None:
        if self.follow_assignment and self.models:
            raise SettingsError(f"{PREFIX}MODELS must be empty when {PREFIX}FOLLOW_ASSIGNMENT is on")
        if not self.models and not self.follow_assignment:
            raise SettingsError(f"{PREFIX}MODELS is required: a comma list of the models to serve")
        for model in self.models:
            try:
                check_model_name(model)
            except SchemaError as exc:
                raise SettingsError(f"{PREFIX}MODELS: {exc.message}") from None
        if len(set(self.models)) != len(self.models):
            raise SettingsError(f"{PREFIX}MODELS lists a model twice: {','.join(self.models)}")
        if not _WORKER_ID.match(self.worker_id):
            raise SettingsError(f"worker id {self.worker_id!r} must be 1-128 of [A-Za-z0-9_.-]")
        if not _DEVICE.match(self.device):
            raise SettingsError(f"device {self.device!r} must be cpu, cuda, cuda:N or auto")
        if self.intra_op_threads < 1:
            raise SettingsError("intra_op_threads must be >= 1")
        if self.mode not in ("models", "pool"):
            raise SettingsError(f"{PREFIX}MODE must be models or pool, not {self.mode!r}")
        if self.pool_threads < 1:
            raise SettingsError("pool_threads must be >= 1")
        if self.pool_queue_records < 1:
            raise SettingsError("pool_queue_records must be >= 1")
        if self.pool_dormant_after_s < 0:
            raise SettingsError("pool_dormant_after_s must be >= 0")
        if self.pool_dormant_sweep_ms < 10:
            raise SettingsError("pool_dormant_sweep_ms must be >= 10")
        if self.pool_missing_topic_recheck_s < 0:
            raise SettingsError("pool_missing_topic_recheck_s must be >= 0")
        if self.max_fetch_records < 1:
            raise SettingsError("max_fetch_records must be >= 1")
        if self.bulk_max_batch < 1:
            raise SettingsError("bulk_max_batch must be >= 1")
        if not 0.0 < self.bulk_share <= 1.0:
            raise SettingsError("bulk_share must be in (0, 1]")
        if self.pipeline_depth < 1:
            raise SettingsError("pipeline_depth must be >= 1")
        if self.commit_interval_ms < 0:
            raise SettingsError("commit_interval_ms must be >= 0")
        if self.max_sequences < 1:
            raise SettingsError("max_sequences must be >= 1")
        if self.retry_attempts < 1:
            raise SettingsError("retry_attempts must be >= 1")
        if not 0 <= self.retry_base_ms <= self.retry_max_ms:
            raise SettingsError("need 0 <= retry_base_ms <= retry_max_ms")
        if not 0.0 <= self.retry_jitter <= 1.0:
            raise SettingsError("retry_jitter must be in [0, 1]")
        if self.idle_fetch_wait_ms < 0:
            raise SettingsError("idle_fetch_wait_ms must be >= 0")
        if self.drain_timeout_s < 0:
            raise SettingsError("drain_timeout_s must be >= 0")
        if self.heartbeat_interval_s <= 0:
            raise SettingsError("heartbeat_interval_s must be > 0")
        if self.download_timeout_s <= 0:
            raise SettingsError("download_timeout_s must be > 0")
        if self.memory_budget_mb < 0:
            raise SettingsError("memory_budget_mb must be >= 0")
        if self.overcommit_pct < 0:
            raise SettingsError("overcommit_pct must be >= 0")
        if self.size_factor < 1.0:
            raise SettingsError("size_factor must be >= 1")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"metrics_port {self.metrics_port} is not in 0..65535")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        """Settings from ``FLEET_WORKER_*``, ``FLEET_NAMESPACE``, ``FLEET_KAFKA_*`` and ``FLEET_REDIS_*``."""
        following = env.get(f"{PREFIX}FOLLOW_ASSIGNMENT", "").strip().lower() in ("1", "true", "yes", "on")
        if not env.get(f"{PREFIX}MODELS", "").strip() and not following:
            raise SettingsError(f"{PREFIX}MODELS is required: a comma list of the models to serve")
        return load(cls, env, PREFIX)
