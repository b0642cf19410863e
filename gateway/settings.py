"""Settings of the gateway process, read from ``FLEET_GATEWAY_*`` (plus the shared fleet settings)."""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from schemas import FleetError, FleetSettings, SettingsError, check_model_name, doc, load

_GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def default_gateway_id() -> str:
    """``host-pid-random``: unique per process, so each gateway reads its own reply stream."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:60].strip("-.") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway needs: where to listen, limits, timeouts and the fleet's backends."""

    host: str = doc("Address the HTTP server binds to.", "127.0.0.1")
    port: int = doc("TCP port of the HTTP server (0 picks a free port).", 8000)
    grpc_port: int = doc(
        "TCP port of the OIP v2 gRPC server (Triton's inference.GRPCInferenceService and grpc.health.v1), on "
        "the same address; 0 turns it off. With FLEET_GATEWAY_PORT=0 it also takes a free port unless it is 0.",
        8001,
    )
    gateway_id: str = doc(
        "Identity of this process; names its Redis reply stream (default host-pid-random).",
        default_factory=default_gateway_id,
        env="FLEET_GATEWAY_ID",
    )
    max_body_bytes: int = doc(
        "Largest request, as sent (HTTP body) and as queued (tensors as raw bytes plus the envelope); bigger "
        "gets 413. At most FLEET_KAFKA_MAX_REQUEST_BYTES.",
        16 << 20,
    )
    default_timeout_s: float = doc("Request timeout when the client sets none.", 30.0)
    max_timeout_s: float = doc("Cap on a client-requested timeout.", 300.0)
    registry_cache_ttl_s: float = doc("Seconds a registry lookup is cached (only default pointers move).", 1.0)
    backend_timeout_s: float = doc("Longest a Kafka publish or Redis call may take before the answer is 503.", 1.0)
    max_in_flight: int = doc("Infer requests handled at once; beyond it the answer is 503 OVERLOADED.", 10_000)
    coalesce: str = doc(
        "Sync requests for one model version that arrive in the same event-loop turn travel as one Kafka record, "
        "and their replies as one reply-stream entry: auto (only while every worker serving the model says it "
        "reads such records), on (always: every worker runs this release), off (one record per request).",
        "auto",
    )
    external_scaler: bool = doc(
        "Workers are started by something outside the fleet (KEDA, an HPA, a process supervisor): a sync "
        "request for a model no live worker serves waits for one instead of failing with 503 MODEL_UNAVAILABLE.",
        False,
    )
    worker_return_grace_s: float = doc(
        "A model this gateway saw served this recently waits for a worker to return (a restart, a rollout) "
        "instead of failing fast when no worker and no autoscaler is live.",
        60.0,
    )
    shed_late_requests: bool = doc(
        "Refuse at once (503 OVERLOADED) a sync request that would wait for its model longer than half its timeout, "
        "judged from the replies this gateway sees.",
        True,
    )
    max_in_flight_bytes: int = doc(
        "Body bytes of the infer requests handled at once (Content-Length, checked before reading); beyond it "
        "the answer is 503 OVERLOADED.",
        256 << 20,
    )
    http_front: bool = doc(
        "Answer plain sync infer requests (JSON or binary bodies up to FLEET_GATEWAY_DECODE_INLINE_BYTES, "
        "HTTP/1.1) and the OIP health, readiness and metadata GETs on the gateway's lean HTTP path, with the same "
        "checks, answers and errors; any other request moves its connection to aiohttp. Off: aiohttp answers "
        "everything.",
        True,
    )
    header_timeout_s: float = doc(
        "Longest wait for a complete request head after a connection opens or its previous response; the "
        "connection is closed after it (also the idle keep-alive timeout).",
        15.0,
    )
    body_timeout_s: float = doc(
        "Longest a request body may take to arrive; later is 408 REQUEST_TIMEOUT and the connection closed.", 60.0
    )
    decode_inline_bytes: int = doc(
        "Bodies up to this size are decoded on the event loop; larger ones in the decode processes.", 256 << 10
    )
    decode_processes: int = doc(
        "Processes that decode large bodies (off the event loop, at a lower priority). Each takes a core while it "
        "decodes; raise it where the gateway has cores to spare.",
        1,
    )
    shutdown_grace_s: float = doc("On stop, how long in-flight requests may take to finish.", 10.0)
    stream_idle_timeout_s: float = doc(
        "Generation: a request whose worker sends no token for this long ends with an error (the worker died).", 30.0
    )
    files_dir: str = doc(
        "Where POST /v1/files keeps uploads and OpenAI batches write their output and error files: a directory or "
        "an fsspec URL (s3://, gs://, az://: install the store's extra). Every gateway of a fleet must see the same.",
        "~/.cache/inference-fleet/files",
    )
    files_max_bytes: int = doc("Largest file POST /v1/files accepts; larger gets 413.", 200 << 20)
    batches: bool = doc(
        "Drive OpenAI batches (POST /v1/batches) in this gateway: each batch is run by one gateway at a time, "
        "which holds its lease in Redis; another gateway resumes it from its checkpoint when that one dies.",
        True,
    )
    batch_max_running: int = doc("Batches one gateway drives at once (the others wait for a free gateway).", 4)
    batch_window: int = doc("Lines of one batch in flight at once (sent to the bulk lane, not answered yet).", 256)
    batch_poll_s: float = doc("How often a gateway looks for batches that nobody drives.", 1.0)
    batch_lease_s: float = doc(
        "A batch's lease: a gateway that died is replaced by another within about this plus batch_poll_s.", 10.0
    )
    batch_checkpoint_s: float = doc("How often a running batch writes its answered lines and commits progress.", 1.0)
    batch_line_timeout_s: float = doc(
        "A batch line unanswered this long is answered in the error file with DEADLINE_EXCEEDED.", 3600.0
    )
    batch_cancel_grace_s: float = doc("A cancelled batch keeps the answers of lines in flight this long.", 5.0)
    job_ttl_s: int = doc(
        "Seconds an async job (status, result, idempotency key) is kept after submission; also the "
        "default and the cap of an async job's deadline. Workers keep its result at least this long.",
        86_400,
    )
    webhooks: bool = doc(
        "Allow async jobs to name a completion webhook (X-Callback-Url). Off by default: when on, this "
        "gateway POSTs job documents to URLs chosen by its clients.",
        False,
    )
    webhook_max_attempts: int = doc("Tries of one webhook delivery before it is given up (logged).", 5)
    webhook_backoff_s: float = doc("Pause after the first failed webhook try; doubles after each one.", 0.5)
    webhook_backoff_max_s: float = doc("Cap on the pause between two webhook tries.", 30.0)
    webhook_timeout_s: float = doc("Longest one webhook POST may take.", 5.0)
    webhook_concurrency: int = doc("Webhook deliveries in progress at once per gateway.", 16)
    webhook_expiry_grace_s: float = doc(
        "A job with a webhook that no worker has answered this long after its deadline is expired by a "
        "gateway, and the webhook fires with status expired.",
        30.0,
    )
    wake_interval_s: float = doc(
        "For pool workers with dormant partitions (FLEET_WORKER_POOL_DORMANT_AFTER_S): after a request lands, "
        "name its partition on Redis pub/sub, at most once per partition per this many seconds, so a worker "
        "fetches a dormant one at once instead of at its next sweep. 0 = off (Kafka, where dormancy is off).",
        0.0,
    )
    retry_relay: bool = doc(
        "Relay due retries from the namespace's shared retry topics to their models' request topics (every "
        "gateway takes a share of the retry topics' partitions). Turn off only where other gateways relay them.",
        True,
    )
    auth: bool = doc(
        "Require an API key (Authorization: Bearer or X-API-Key; `fleet keys create`) on every route but "
        "/v2/health/*, /v2, /v2/openapi.json and /metrics. Off for the local stack; on in deploy/.",
        False,
    )
    auth_metrics: bool = doc("With auth on, require a key on /metrics too (Prometheus then needs one).", False)
    auth_cache_ttl_s: float = doc(
        "Seconds a looked-up API key is cached by this gateway (a revocation takes effect within it).", 5.0
    )
    auth_cache_size: int = doc("API keys cached at most (least recently used ones are dropped).", 10_000)
    model_rate_limits: str = doc(
        "Per-model rate limits shared by every key and gateway, requests/s: `model=rate,...` (unlisted: none).",
        "",
    )
    model_token_limits: str = doc(
        "Per-model limits in tokens/s on the /v1 generation and embedding routes, shared by every key and gateway: "
        "`model=tokens,...`; a request takes its prompt's tokens (estimated: 4 bytes of text a token) plus its "
        "max_tokens (unlisted: none).",
        "",
    )
    key_token_rate: float = doc(
        "Every API key's limit in tokens/s on the /v1 generation and embedding routes (0: none), counted as for "
        "FLEET_GATEWAY_MODEL_TOKEN_LIMITS.",
        0.0,
    )
    rate_burst_s: float = doc("A token bucket holds this many seconds of its rate (at least 1 request).", 1.0)
    max_tensor_elements: int = doc("Largest element count of one input tensor; more gets 400 INVALID_INPUT.", 16 << 20)
    max_header_line_bytes: int = doc("Longest HTTP request line or header line; longer gets 400.", 8190)
    max_header_field_bytes: int = doc("Longest HTTP header value; longer gets 400.", 8190)
    max_headers: int = doc("Most HTTP request headers; more gets 400.", 128)
    gc_young_threshold: int = doc(
        "`python -m gateway`: tracked objects allocated (net of those freed) before Python collects its youngest "
        "generation; Python's default (700) is passed by the live objects of a few dozen requests in flight, so "
        "the collector ran every few milliseconds and found almost nothing. 0 keeps Python's default.",
        10_000,
    )
    fleet: FleetSettings = doc("Namespace, Kafka and Redis of the fleet.", prefix="", default_factory=FleetSettings)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} is not in 0..65535")
        if not 0 <= self.grpc_port <= 65535:
            raise SettingsError(f"grpc_port {self.grpc_port} is not in 0..65535")
        if not _GATEWAY_ID.match(self.gateway_id):
            raise SettingsError(f"gateway id {self.gateway_id!r} must be 1-128 of [A-Za-z0-9_.-]")
        for name in ("max_body_bytes", "max_in_flight", "max_in_flight_bytes", "decode_processes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")
        if self.decode_inline_bytes < 0:
            raise SettingsError("decode_inline_bytes must be >= 0")
        if self.coalesce not in ("auto", "on", "off"):
            raise SettingsError(f"FLEET_GATEWAY_COALESCE must be auto, on or off, not {self.coalesce!r}")
        if self.max_body_bytes > self.fleet.kafka.max_request_bytes:
            raise SettingsError(
                f"max_body_bytes {self.max_body_bytes} exceeds the Kafka record limit "
                f"FLEET_KAFKA_MAX_REQUEST_BYTES={self.fleet.kafka.max_request_bytes}: raise that one too"
            )
        for name in (
            "default_timeout_s",
            "max_timeout_s",
            "registry_cache_ttl_s",
            "backend_timeout_s",
            "header_timeout_s",
            "body_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        if self.job_ttl_s < 1:
            raise SettingsError("job_ttl_s must be >= 1")
        if self.webhook_max_attempts < 1 or self.webhook_concurrency < 1:
            raise SettingsError("webhook_max_attempts and webhook_concurrency must be >= 1")
        for name in ("webhook_backoff_s", "webhook_backoff_max_s", "webhook_timeout_s", "webhook_expiry_grace_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        for name in ("files_max_bytes", "batch_max_running", "batch_window"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")
        for name in ("batch_poll_s", "batch_lease_s", "batch_checkpoint_s", "batch_line_timeout_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        if self.batch_cancel_grace_s < 0:
            raise SettingsError("batch_cancel_grace_s must be >= 0")
        if self.stream_idle_timeout_s <= 0:
            raise SettingsError("stream_idle_timeout_s must be > 0")
        if self.shutdown_grace_s < 0 or self.worker_return_grace_s < 0:
            raise SettingsError("shutdown_grace_s and worker_return_grace_s must be >= 0")
        if self.default_timeout_s > self.max_timeout_s:
            raise SettingsError("default_timeout_s must not exceed max_timeout_s")
        for name in ("auth_cache_ttl_s", "rate_burst_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be > 0")
        for name in ("auth_cache_size", "max_tensor_elements", "max_header_line_bytes", "max_header_field_bytes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1")
        if self.max_headers < 1:
            raise SettingsError("max_headers must be >= 1")
        if self.gc_young_threshold < 0:
            raise SettingsError("gc_young_threshold must be >= 0")
        self.model_rates()  # validates the text
        self.model_token_rates()
        if self.key_token_rate < 0:
            raise SettingsError("key_token_rate must be >= 0")

    def model_rates(self) -> dict[str, float]:
        """``model_rate_limits`` parsed: model name -> requests per second."""
        return _rates(self.model_rate_limits, "model_rate_limits")

    def model_token_rates(self) -> dict[str, float]:
        """``model_token_limits`` parsed: model name -> tokens per second."""
        return _rates(self.model_token_limits, "model_token_limits")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewaySettings:
        """Settings from ``FLEET_GATEWAY_*``, ``FLEET_NAMESPACE``, ``FLEET_KAFKA_*`` and ``FLEET_REDIS_*``."""
        return load(cls, env, "FLEET_GATEWAY_")


def _rates(text: str, setting: str) -> dict[str, float]:
    """``model=rate,...`` parsed: model name -> rate."""
    rates: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        model, sep, rate_text = item.partition("=")
        try:
            rate = float(rate_text)
            check_model_name(model.strip())
        except (ValueError, FleetError):
            rate = -1.0
        if not sep or not 0 < rate < math.inf:
            raise SettingsError(f"{setting} item {item.strip()!r}: use model=rate with a rate > 0")
        rates[model.strip()] = rate
    return rates
