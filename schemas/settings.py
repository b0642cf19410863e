"""Settings shared by every service, and the strict loader that reads them from the environment.

Each service has one frozen dataclass (``GatewaySettings``, ``WorkerSettings``, ...) read from
``FLEET_<SERVICE>_*``; the Kafka and Redis connection settings are nested inside it and read from
``FLEET_KAFKA_*`` and ``FLEET_REDIS_*`` (``KAFKA_BOOTSTRAP`` and ``REDIS_URL`` are accepted as
aliases). An unknown variable under a service's prefix is an error, so a typo never goes unnoticed.
Every field carries a one-line ``doc`` in its metadata; ``describe()`` renders them for the README.
"""

from __future__ import annotations

import dataclasses
import ssl
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from .constants import DEFAULT_NAMESPACE, DEFAULT_PARTITIONS

T = TypeVar("T")

#: Variables read as fallbacks when the FLEET_-prefixed name is not set.
ALIASES = {"FLEET_KAFKA_BOOTSTRAP": "KAFKA_BOOTSTRAP", "FLEET_REDIS_URL": "REDIS_URL", "FLEET_NAMESPACE": "FLEET_NS"}


class SettingsError(ValueError):
    """A setting that is unknown or cannot be parsed."""


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field with a one-line description (and an optional env prefix for nested settings)."""
    metadata = {"doc": text}
    for key in ("prefix", "env"):
        if key in kwargs:
            metadata[key] = kwargs.pop(key)
    if default is dataclasses.MISSING:
        return field(metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def _cast(raw: str, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw == "":
            return None
        return _cast(raw, args[0], name)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        return tuple(_cast(x.strip(), item, name) for x in raw.split(",") if x.strip())
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, float, str):
            return kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None
    raise SettingsError(f"{name}: unsupported setting type {kind}")


def load(cls: type[T], env: Mapping[str, str], prefix: str, **overrides: Any) -> T:
    """Build settings ``cls`` from ``env`` variables named ``prefix + FIELD``; nested dataclass
    fields use the ``prefix`` in their metadata. ``overrides`` win over the environment."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    known: set[str] = set()
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            if f.name not in overrides:
                values[f.name] = load(kind, env, f.metadata.get("prefix", f"{prefix}{f.name.upper()}_"))  # type: ignore[arg-type]
            continue
        var = f.metadata.get("env", f"{prefix}{f.name.upper()}")
        known.add(var)
        raw = env.get(var)
        if raw is None and var in ALIASES:
            raw = env.get(ALIASES[var])
        if raw is not None and f.name not in overrides:
            values[f.name] = _cast(raw, kind, var)
    unknown = sorted(k for k in env if k.startswith(prefix) and k not in known and not _is_nested(cls, k, hints))
    if prefix and unknown:
        raise SettingsError(f"unknown setting(s) {unknown}; see `fleet config` for the documented ones")
    values.update(overrides)
    return cls(**values)


def _is_nested(cls: Any, var: str, hints: dict[str, Any]) -> bool:
    for f in dataclasses.fields(cls):
        nested_prefix = f.metadata.get("prefix", "")
        if dataclasses.is_dataclass(hints[f.name]) and nested_prefix and var.startswith(nested_prefix):
            return True
    return False


def describe(cls: Any, prefix: str) -> list[tuple[str, str, str]]:
    """(variable, default, doc) for every setting of ``cls``, nested ones included."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            rows.extend(describe(kind, f.metadata.get("prefix", f"{prefix}{f.name.upper()}_")))
            continue
        var = f.metadata.get("env", f"{prefix}{f.name.upper()}")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = "(generated)"
        else:
            default = "(required)"
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        alias = f" (alias `{ALIASES[var]}`)" if var in ALIASES else ""
        rows.append((var, str(default), f.metadata.get("doc", "") + alias))
    return rows


#: FLEET_KAFKA_BROKER values.
BROKER_KINDS = ("auto", "kafka", "embedded")
#: The cluster id the embedded broker (Tansu) reports by default.
EMBEDDED_CLUSTER_ID_PREFIX = "tansu"


@dataclass(frozen=True)
class KafkaSettings:
    """Connection and client tuning for the Kafka cluster (read from ``FLEET_KAFKA_*``)."""

    bootstrap: str = doc("Comma-separated bootstrap servers.", "127.0.0.1:9092")
    security_protocol: str = doc("PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.", "PLAINTEXT")
    sasl_mechanism: str = doc("PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 when SASL is used.", "PLAIN")
    sasl_username: str = doc("SASL user name.", "")
    sasl_password: str = doc("SASL password.", "")
    ssl_cafile: str = doc("CA bundle that signs the brokers' certificates (SSL/SASL_SSL).", "")
    ssl_certfile: str = doc("Client certificate for mutual TLS.", "")
    ssl_keyfile: str = doc("Client private key for mutual TLS.", "")
    request_timeout_ms: int = doc("Timeout of one Kafka request; bounds how long a dead broker can stall.", 5000)
    fetch_max_wait_ms: int = doc("Longest a fetch waits for data (the local broker's latency floor).", 10)
    session_timeout_ms: int = doc("Consumer-group session timeout: how fast a dead worker's partitions move.", 6000)
    heartbeat_interval_ms: int = doc("Consumer-group heartbeat interval.", 1000)
    max_request_bytes: int = doc("Largest record a producer sends (bigger requests are refused first).", 16 << 20)
    linger_ms: int = doc("Producer linger: >0 trades latency for fewer, bigger produce requests.", 0)
    compression: str = doc("Producer compression: none, gzip, snappy, lz4 or zstd.", "none")
    partitions: int = doc(
        "Partitions of a new model's request topic, unless registration names a count (caps the model's useful "
        "workers; its bulk topic, created on first use, gets as many).",
        DEFAULT_PARTITIONS,
    )
    dlq_partitions: int = doc("Partitions of the namespace's shared dead-letter topic.", 2)
    retry_partitions: int = doc(
        "Partitions of each of the namespace's two shared retry topics (caps the gateways relaying retries).", 4
    )
    replication_factor: int = doc(
        "Replication factor of new topics; 0 follows the cluster (3 with 3 brokers or more, else the broker count).", 0
    )
    broker: str = doc(
        "What the cluster runs: auto (ask it: the embedded broker names its cluster tansu_cluster), kafka (Kafka "
        "and compatible: lag from ListOffsets, the idempotent producer) or embedded (lag from fetch probes).",
        "auto",
    )
    idempotence: str = doc(
        "Idempotent request producer (a broker retry cannot duplicate a request): auto (on unless the broker is the "
        "embedded one, which lacks it), on or off.",
        "auto",
    )

    def __post_init__(self) -> None:
        if self.retry_partitions < 1:
            raise SettingsError("FLEET_KAFKA_RETRY_PARTITIONS must be >= 1")
        if self.partitions < 1 or self.dlq_partitions < 1:
            raise SettingsError("FLEET_KAFKA_PARTITIONS and FLEET_KAFKA_DLQ_PARTITIONS must be >= 1")
        if self.replication_factor < 0:
            raise SettingsError("FLEET_KAFKA_REPLICATION_FACTOR must be >= 0 (0: follow the cluster)")
        if self.broker not in BROKER_KINDS:
            raise SettingsError(f"FLEET_KAFKA_BROKER must be one of {', '.join(BROKER_KINDS)}, not {self.broker!r}")
        if self.idempotence not in ("auto", "on", "off"):
            raise SettingsError(f"FLEET_KAFKA_IDEMPOTENCE must be auto, on or off, not {self.idempotence!r}")

    def embedded(self, cluster_id: str | None) -> bool:
        """Whether the cluster is the embedded broker (Tansu): FLEET_KAFKA_BROKER, or with auto the cluster id the
        cluster reports (DescribeCluster / Metadata); its ListOffsets and idempotent producer are not usable."""
        if self.broker != "auto":
            return self.broker == "embedded"
        return (cluster_id or "").startswith(EMBEDDED_CLUSTER_ID_PREFIX)

    def idempotent(self, cluster_id: str | None) -> bool:
        """Whether request producers enable idempotence on the cluster that reports ``cluster_id``."""
        if self.idempotence != "auto":
            return self.idempotence == "on"
        return not self.embedded(cluster_id)

    def replication_for(self, brokers: int) -> int:
        """Replication factor of a new topic on a cluster of ``brokers`` brokers (the setting, unless 0)."""
        if self.replication_factor > 0:
            return self.replication_factor
        return max(1, min(3, brokers))

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS context when the protocol uses SSL, else None."""
        if "SSL" not in self.security_protocol:
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile or None)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to aiokafka producers, consumers and admin clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kwargs

    def producer_kwargs(self, *, idempotent: bool = False) -> dict[str, Any]:
        """Keyword arguments for an AIOKafkaProducer (``idempotent``: one whose broker-side retries cannot
        duplicate a record; see ``idempotent()``)."""
        kwargs: dict[str, Any] = {
            **self.client_kwargs(),
            "linger_ms": self.linger_ms,
            "max_request_size": self.max_request_bytes,
            "compression_type": None if self.compression == "none" else self.compression,
            "acks": "all",
        }
        if idempotent:
            kwargs["enable_idempotence"] = True
        return kwargs

    def consumer_kwargs(self, group_id: str) -> dict[str, Any]:
        """Keyword arguments for a worker's AIOKafkaConsumer in ``group_id`` (manual commits)."""
        return {
            **self.client_kwargs(),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_partition_fetch_bytes": self.max_request_bytes,
        }


class RedisPoolExhaustedError(RedisConnectionError):
    """Every connection of this process's Redis pool stayed in use for the whole pool timeout: the process
    has more Redis calls in flight than ``max_connections`` (overload), which says nothing about Redis."""

    def __init__(self, size: int, timeout_s: float) -> None:
        super().__init__(
            f"Redis connection pool exhausted: all {size} connections of this process stayed busy for "
            f"{timeout_s:g} s (FLEET_REDIS_MAX_CONNECTIONS, FLEET_REDIS_POOL_TIMEOUT_S)"
        )


class _BlockingPool(BlockingConnectionPool):
    """redis-py's blocking pool (a command waits for a free connection instead of failing at once), whose
    wait past the timeout is a ``RedisPoolExhaustedError`` rather than a generic "No connection available"."""

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        try:
            return await super().get_connection()  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, TimeoutError) and not isinstance(exc, RedisPoolExhaustedError):
                raise RedisPoolExhaustedError(self.max_connections, float(self.timeout or 0)) from exc
            raise


@dataclass(frozen=True)
class RedisSettings:
    """Connection to the Redis (or Valkey) server (read from ``FLEET_REDIS_*``)."""

    url: str = doc(
        "redis:// or rediss:// (TLS) URL; put a password in it as redis://:PASS@host:port/0. A Redis Cluster: "
        "redis+cluster:// or rediss+cluster:// and the address of any of its nodes (or FLEET_REDIS_CLUSTER).",
        "redis://127.0.0.1:6379/0",
    )
    cluster: bool = doc(
        "The server is a Redis (or Valkey) Cluster: use the cluster client, which follows the slot map and "
        "redirects (also implied by a +cluster URL scheme).",
        False,
    )
    socket_timeout_s: float = doc("Timeout of one Redis command (a dead server fails within it).", 2.0)
    connect_timeout_s: float = doc("Timeout of connecting to Redis.", 1.0)
    max_connections: int = doc("Size of each process's Redis connection pool.", 64)
    pool_timeout_s: float = doc(
        "Longest a Redis call waits for a free pooled connection when all are busy (a burst queues); past it "
        "the call fails as 'connection pool exhausted'. Keep it below the gateway's backend timeout.",
        0.5,
    )
    ssl_ca_certs: str = doc("CA bundle for rediss:// URLs.", "")
    replica_acks: int = doc(
        "Replicas that must hold a worker's replies before it commits their requests (WAIT on each node written, "
        "once per round; fewer in time: the replies count as undelivered and are sent again). 0: off; set 1 on a "
        "Redis Cluster whose masters have replicas, so no reply is lost with a master that fails.",
        0,
    )
    replica_ack_timeout_s: float = doc(
        "Longest a worker waits for FLEET_REDIS_REPLICA_ACKS replicas to acknowledge a round's replies.", 0.5
    )

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise SettingsError("FLEET_REDIS_MAX_CONNECTIONS must be >= 1")
        if self.replica_acks < 0:
            raise SettingsError("FLEET_REDIS_REPLICA_ACKS must be >= 0 (0: do not wait for replicas)")
        if self.replica_acks and not 0 < self.replica_ack_timeout_s < self.socket_timeout_s:
            raise SettingsError(
                "FLEET_REDIS_REPLICA_ACK_TIMEOUT_S must be > 0 and below FLEET_REDIS_SOCKET_TIMEOUT_S "
                "(a WAIT longer than a command's timeout would look like a dead server)"
            )
        if self.pool_timeout_s <= 0:
            raise SettingsError("FLEET_REDIS_POOL_TIMEOUT_S must be > 0")

    @classmethod
    def from_dsn(cls, url: str) -> RedisSettings:
        """Settings for ``url`` with every other field at its default."""
        return cls(url=url)

    @property
    def is_cluster(self) -> bool:
        """Whether the server is a Redis Cluster (``cluster``, or a ``redis+cluster`` or ``rediss+cluster`` URL)."""
        return self.cluster or self.url.split("://", 1)[0].endswith("+cluster")

    def client(self) -> Any:
        """A new ``redis.asyncio.Redis`` (bytes in, bytes out) bounded by these timeouts, on its own pool of
        ``max_connections``, where a call waits up to ``pool_timeout_s`` for a connection when all are busy;
        on a Redis Cluster a ``redis.asyncio.cluster.RedisCluster`` (``max_connections`` per node)."""
        import redis.asyncio as aioredis

        if self.is_cluster:
            return self._cluster_client()
        kwargs: dict[str, Any] = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.connect_timeout_s,
            "max_connections": self.max_connections,
            "timeout": self.pool_timeout_s,
            "health_check_interval": 15,
        }
        if self.url.startswith("rediss://") and self.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = self.ssl_ca_certs
        return aioredis.Redis.from_pool(_BlockingPool.from_url(self.url, **kwargs))

    def _cluster_client(self) -> Any:
        from redis.asyncio.cluster import RedisCluster

        scheme, rest = self.url.split("://", 1)
        url = f"{scheme.removesuffix('+cluster')}://{rest}"
        kwargs: dict[str, Any] = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.connect_timeout_s,
            "max_connections": self.max_connections,
            "health_check_interval": 15,
        }
        if url.startswith("rediss://") and self.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = self.ssl_ca_certs
        return RedisCluster.from_url(url, **kwargs)


@dataclass(frozen=True)
class TracingSettings:
    """OpenTelemetry traces (read from ``FLEET_TRACING_*``): off unless an OTLP endpoint is set."""

    otlp_endpoint: str = doc(
        "OTLP/HTTP (protobuf) collector, e.g. http://otel-collector:4318 (spans go to its /v1/traces); empty: "
        "tracing off (no spans are made).",
        "",
    )
    sample_ratio: float = doc(
        "Share of new traces recorded; a request that brings a traceparent follows its sampled flag.", 1.0
    )
    export_delay_ms: int = doc("Longest a finished span waits before its batch is exported.", 1000)

    def __post_init__(self) -> None:
        if self.otlp_endpoint and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise SettingsError(f"FLEET_TRACING_OTLP_ENDPOINT={self.otlp_endpoint!r} must be an http(s):// URL")
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise SettingsError("FLEET_TRACING_SAMPLE_RATIO must be within 0..1")
        if self.export_delay_ms < 1:
            raise SettingsError("FLEET_TRACING_EXPORT_DELAY_MS must be >= 1")

    @property
    def enabled(self) -> bool:
        """True when spans are made and exported."""
        return bool(self.otlp_endpoint)


@dataclass(frozen=True)
class FleetSettings:
    """What every process needs to find the deployment: namespace, Kafka and Redis."""

    namespace: str = doc(
        "Namespace of topic names and Redis keys (several fleets can share a cluster).",
        DEFAULT_NAMESPACE,
        env="FLEET_NAMESPACE",
    )
    kafka: KafkaSettings = doc("Kafka connection.", prefix="FLEET_KAFKA_", default_factory=KafkaSettings)
    redis: RedisSettings = doc("Redis connection.", prefix="FLEET_REDIS_", default_factory=RedisSettings)
    tracing: TracingSettings = doc("OpenTelemetry tracing.", prefix="FLEET_TRACING_", default_factory=TracingSettings)
