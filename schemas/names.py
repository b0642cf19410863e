"""Topic names, consumer-group names and the Redis key layout, all derived from one namespace.

Layout for namespace ``ns`` (default ``fleet``)::

    Kafka
      {ns}.requests.{model}            request topic of a model (all versions): the interactive lane
      {ns}.bulk.{model}                bulk lane of a model (served when the interactive lane is empty);
                                       created by the first publisher of a bulk request (`schemas.topics`)
      {ns}.retry                       interactive requests of every model waiting for a retry: shared by the
                                       namespace (FLEET_KAFKA_RETRY_PARTITIONS partitions), key = request id,
                                       headers fleet-model, fleet-version, fleet-not-before (epoch ms)
      {ns}.bulk-retry                  bulk requests waiting for a retry (same layout)
      {ns}.dlq                         dead letters of every model of the namespace (FLEET_KAFKA_DLQ_PARTITIONS
                                       partitions), headers fleet-model and fleet-version (version when the
                                       request decoded); `fleet dlq` filters it by model
      {ns}.workers.{model}             consumer group of the model's workers (interactive lane)
      {ns}.bulk-workers.{model}        consumer group of the model's workers on the bulk lane
      {ns}.retry-relay                 consumer group of the gateways' retry relay over both retry topics: it
                                       produces each retry, once due, to its model's request topic of its lane
    Redis
      {ns}:models                      SET of registered model names
      {ns}:model:{m}:versions          SET of the model's versions
      {ns}:model:{m}:v:{v}             msgpack ModelRecord (immutable once written)
      {ns}:model:{m}:v:{v}:measured:{kind}  footprint a worker measured after loading, on a device of
                                       that kind (cpu or gpu; bytes)
      {ns}:model:{m}:v:{v}:load_failed STRING (JSON `schemas.load_failures.LoadFailure`: reason, ts_ms, worker;
                                       EXPIRE 60 s) the last failed load of the version; deleted by a load
                                       that succeeds. The gateway's model readiness reads it
      {ns}:model:{m}:default           the version served when none is asked for
      {ns}:model:{m}:traffic           HASH version -> percent of unversioned requests (a canary / A-B
                                       split; absent = all to the default; see `schemas.traffic`)
      {ns}:model:{m}:previous_default  the default before the last change: what `rollback` returns to
      {ns}:registry:epoch              STRING counter bumped in the same step as every registry write a reader
                                       may have cached (register, remove, default, split, rollback, a changed
                                       measured size): readers re-read only when it moved (`schemas.registry`)
      {ns}:replies:{gateway_id}        STREAM of replies for one gateway process
      {ns}:client:{client_id}:replies  STREAM of replies for one direct producer client (`fleet.producer`)
      {ns}:result:{request_id}         first result stored for a request (dedups redelivery; an async
                                       job's result, or its CANCELLED marker)
      {ns}:emitted:{request_id}        marker: the request's first result was produced to its reply topic
      {ns}:job:{job_id}                HASH of an async job (EXPIRE = job TTL; fields in `schemas.jobs`)
      {ns}:idem:{owner}:{key}          STRING idempotency key of one API key id ("-" without auth) ->
                                       "job_id fingerprint" (EXPIRE = job TTL)
      {ns}:jobs:callbacks              STREAM of finished jobs that have a webhook (field ``j`` = job id);
                                       consumer group ``webhooks`` of the gateways delivers them
      {ns}:jobs:deadlines              ZSET job id -> deadline + grace (epoch ms) of jobs with a webhook: a
                                       gateway expires the ones no worker answered (`EXPIRE_SCRIPT`)
      {ns}:jobs:outbox                 ZSET job id -> when a gateway's sweep (re)publishes it (epoch ms): jobs
                                       stored but not known to be published yet (`schemas.jobs`)
      {ns}:job:{job_id}:request        HASH of an outboxed job: ``t`` topic, ``r`` request envelope (EXPIRE = job
                                       TTL; deleted once published)
      {ns}:apikey:{key_id}             HASH of an API key: sha256 of its secret, name, models, rate, created_ms,
                                       revoked_ms (`schemas.apikeys`; the secret is never stored)
      {ns}:apikeys                     SET of every API key id (revoked ones included)
      {ns}:ratelimit:key:{key_id}      HASH token bucket of a key's rate limit (t tokens, ts ms; PEXPIRE when full)
      {ns}:ratelimit:model:{m}         HASH token bucket of a model's rate limit (`gateway.ratelimit`)
      {ns}:dlq:{m}:replays             HASH "partition:offset" of a dead letter of model m in {ns}.dlq -> times
                                       `fleet dlq replay` re-sent it
      {ns}:worker:{worker_id}          HASH heartbeat of a worker (state, models, partitions)
      {ns}:workers                     ZSET of worker ids by last heartbeat (ms)
      {ns}:residency:{worker_id}       STRING (JSON `schemas.residency.WorkerResidency`, EXPIRE 3x heartbeat):
                                       the worker's memory budget and its resident models (size, last use)
      {ns}:assignment:{worker_id}      SET of the models the placement scheduler assigned to a worker that
                                       follows its assignment (no EXPIRE: survives restarts of either side)
      {ns}:placement:{m}               HASH placement status of a model (`autoscaler.placement_store`): state
                                       (placed, partial, schedule_failed, idle), workers, replicas, reason, ts_ms
                                       (written when it changes; the last round's time is in placements:round)
      {ns}:lease:{topic}:{p}           STRING id of the pool worker consuming that partition (`workers.leases`:
                                       valid while its holder's leaseholder key exists; claimed when free or its
                                       holder's liveness lapsed, deleted on a move; no PX of its own)
      {ns}:leaseholder:{worker_id}     STRING liveness of a pool worker's leases (PX 3x heartbeat, refreshed
                                       every beat): its leases are taken over once it is gone
      {ns}:placements:round            STRING epoch ms of the placement scheduler's last round (it confirmed
                                       every stored placement status then)
      {ns}:placements:epoch            STRING counter bumped with every changed placement status (in the same
                                       transaction): pool workers re-read their models' placements when it moved
      {ns}:stats:{m}                   ZSET worker id -> epoch ms of its last service-stats report
      {ns}:stats:{m}:{worker_id}       HASH one worker's service stats for a model (EXPIRE; fields in
                                       `schemas.stats`): written by workers, read by the autoscaler
      {ns}:autoscaler:pins             HASH model -> pinned replicas (manual override; absent = autoscaled)
      {ns}:autoscaler:decision:{m}     HASH the autoscaler's last decision for a model (EXPIRE): desired,
                                       actual, reason, inputs (JSON), capped_by_partitions, pinned, ts_ms
                                       (written when it changes; current while decisions:round exists)
      {ns}:autoscaler:decisions:round  STRING epoch ms of the autoscaler's last round (EXPIRE): the stored
                                       decisions are current while it exists
      {ns}:autoscaler:leader           STRING id of the autoscaler that holds the leader lease (PEXPIRE =
                                       lease; `autoscaler.leader`): only that one scales and places
      {ns}:inventory                   ZSET host -> epoch ms of its last GPU inventory report
      {ns}:inventory:{host}            HASH the GPU inventory of one host (EXPIRE; see `autoscaler.inventory`)

Model names never contain ':', so ``{ns}:stats:{m}`` and ``{ns}:stats:{m}:{worker_id}`` cannot collide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .constants import CPU, DEFAULT_NAMESPACE, DEVICE_KINDS
from .errors import ErrorCode, SchemaError

# Kafka topic names allow [A-Za-z0-9._-] up to 249 chars; keep room for the prefix.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a legal model name, else raise SchemaError(INVALID_REQUEST)."""
    if not _MODEL_NAME.match(name):
        raise SchemaError(
            f"invalid model name {name!r}: use 1-100 of [A-Za-z0-9._-], starting with a letter or digit",
            code=ErrorCode.INVALID_REQUEST,
        )
    return name


def check_version(version: str) -> str:
    """Return ``version`` if it is a legal version label, else raise SchemaError(INVALID_REQUEST)."""
    if not _VERSION.match(version):
        raise SchemaError(
            f"invalid model version {version!r}: use 1-64 of [A-Za-z0-9._-]", code=ErrorCode.INVALID_REQUEST
        )
    return version


def check_topic_name(topic: str) -> str:
    """Return ``topic`` if it is a legal Kafka topic name, else raise SchemaError(INVALID_REQUEST)."""
    if not isinstance(topic, str) or not _TOPIC.match(topic) or topic in (".", ".."):
        raise SchemaError(
            f"invalid Kafka topic name {topic!r}: use 1-249 of [A-Za-z0-9._-]", code=ErrorCode.INVALID_REQUEST
        )
    return topic


class Lane(StrEnum):
    """Priority lane of a request: workers serve ``interactive`` first and fill idle capacity with ``bulk``."""

    INTERACTIVE = "interactive"
    BULK = "bulk"

    @classmethod
    def parse(cls, value: object) -> Lane:
        """The lane named by ``value`` (case-insensitive); SchemaError(INVALID_REQUEST) otherwise."""
        if isinstance(value, Lane):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise SchemaError(
                f"unknown lane {value!r}: use {' or '.join(lane.value for lane in cls)}", code=ErrorCode.INVALID_REQUEST
            ) from None


@dataclass(frozen=True)
class Names:
    """Every topic, group and Redis key name of one deployment (namespace)."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}: use 1-64 of [A-Za-z0-9_-]")

    # Kafka -----------------------------------------------------------------
    def request_topic(self, model: str, lane: Lane | str = Lane.INTERACTIVE) -> str:
        """Topic that carries the requests of ``model`` (every version) on ``lane`` (default interactive)."""
        if Lane.parse(lane) is Lane.BULK:
            return self.bulk_topic(model)
        return f"{self.namespace}.requests.{check_model_name(model)}"

    def bulk_topic(self, model: str) -> str:
        """Bulk-lane request topic of ``model``."""
        return f"{self.namespace}.bulk.{check_model_name(model)}"

    def retry_topic(self, lane: Lane | str = Lane.INTERACTIVE) -> str:
        """The namespace's shared topic where failed requests of ``lane`` (every model) wait for their next try."""
        prefix = "bulk-retry" if Lane.parse(lane) is Lane.BULK else "retry"
        return f"{self.namespace}.{prefix}"

    def retry_topics(self) -> tuple[str, ...]:
        """Both shared retry topics (interactive, bulk)."""
        return tuple(self.retry_topic(lane) for lane in Lane)

    @property
    def retry_relay_group(self) -> str:
        """Consumer group of the gateways' retry relay (`gateway.retry_relay`)."""
        return f"{self.namespace}.retry-relay"

    def lane_of_topic(self, model: str, topic: str) -> Lane | None:
        """The lane whose request topic of ``model``, or shared retry topic, is ``topic`` (else None)."""
        for lane in Lane:
            if topic in (self.request_topic(model, lane), self.retry_topic(lane)):
                return lane
        return None

    def model_topics(self, model: str) -> tuple[str, ...]:
        """The topics registration creates for ``model``: its request topic (the bulk topic comes on first use;
        retry and dead-letter topics are shared by the namespace)."""
        return (self.request_topic(model),)

    def bulk_model(self, topic: str) -> str | None:
        """The model whose bulk-lane topic is ``topic`` (None for any other topic)."""
        prefix = f"{self.namespace}.bulk."
        if not topic.startswith(prefix) or not _MODEL_NAME.match(topic[len(prefix) :]):
            return None
        return topic[len(prefix) :]

    @property
    def dlq_topic(self) -> str:
        """The namespace's dead-letter topic (every model; the model and version are in each record's headers)."""
        return f"{self.namespace}.dlq"

    def worker_group(self, model: str, lane: Lane | str = Lane.INTERACTIVE) -> str:
        """Consumer group shared by the workers of ``model`` on ``lane`` (each lane has its own group)."""
        if Lane.parse(lane) is Lane.BULK:
            return f"{self.namespace}.bulk-workers.{check_model_name(model)}"
        return f"{self.namespace}.workers.{check_model_name(model)}"

    # Redis -----------------------------------------------------------------
    @property
    def models_key(self) -> str:
        """SET of registered model names."""
        return f"{self.namespace}:models"

    def versions_key(self, model: str) -> str:
        """SET of a model's versions."""
        return f"{self.namespace}:model:{model}:versions"

    def record_key(self, model: str, version: str) -> str:
        """msgpack ModelRecord of one version."""
        return f"{self.namespace}:model:{model}:v:{version}"

    def measured_key(self, model: str, version: str, kind: str = CPU) -> str:
        """Measured footprint in bytes of a loaded version on a ``kind`` device (written by workers)."""
        if kind not in DEVICE_KINDS:
            raise ValueError(f"device kind {kind!r} is not one of {', '.join(DEVICE_KINDS)}")
        return f"{self.namespace}:model:{model}:v:{version}:measured:{kind}"

    def load_failure_key(self, model: str, version: str) -> str:
        """The last failed load of a version (reason, time, worker; deleted once a worker loads it)."""
        return f"{self.namespace}:model:{model}:v:{version}:load_failed"

    def default_key(self, model: str) -> str:
        """Default version pointer of a model."""
        return f"{self.namespace}:model:{model}:default"

    def traffic_key(self, model: str) -> str:
        """HASH version -> percent: the traffic split of a model's unversioned requests."""
        return f"{self.namespace}:model:{model}:traffic"

    def previous_default_key(self, model: str) -> str:
        """The default version before the last change of a model's default or split (rollback target)."""
        return f"{self.namespace}:model:{model}:previous_default"

    @property
    def registry_epoch_key(self) -> str:
        """STRING counter bumped by every registry write a reader may have cached (`schemas.registry`)."""
        return f"{self.namespace}:registry:epoch"

    def reply_stream(self, gateway_id: str) -> str:
        """Reply stream read by one gateway process."""
        return f"{self.namespace}:replies:{gateway_id}"

    def client_reply_stream(self, client_id: str) -> str:
        """Reply stream read by one direct Kafka producer client (``fleet.producer.FleetProducer``)."""
        if not _CLIENT_ID.match(client_id):
            raise ValueError(f"invalid client id {client_id!r}: use 1-128 of [A-Za-z0-9_.-]")
        return f"{self.namespace}:client:{client_id}:replies"

    def result_key(self, request_id: str) -> str:
        """First stored result of a request (later duplicates are dropped)."""
        return f"{self.namespace}:result:{request_id}"

    def emitted_key(self, request_id: str) -> str:
        """Marker set once a request's first result was produced to its reply topic (reply kind ``topic``)."""
        return f"{self.namespace}:emitted:{request_id}"

    def job_key(self, job_id: str) -> str:
        """HASH of an async job (its id is the request id; see `schemas.jobs`)."""
        return f"{self.namespace}:job:{job_id}"

    def idempotency_key(self, key: str, owner: str = "") -> str:
        """Client idempotency key -> the job it created (``"job_id fingerprint"``).

        ``owner`` is the API key id of the caller ("" without auth): two tenants' identical
        idempotency keys are two different keys, so one can never replay or probe the other's job.
        """
        return f"{self.namespace}:idem:{owner or '-'}:{key}"

    @property
    def job_deadlines_key(self) -> str:
        """ZSET of jobs with a webhook, scored by when to give up on a worker answer (`schemas.jobs`)."""
        return f"{self.namespace}:jobs:deadlines"

    @property
    def job_outbox_key(self) -> str:
        """ZSET of stored jobs not known to be published yet, scored by when a sweep (re)publishes them."""
        return f"{self.namespace}:jobs:outbox"

    def job_request_key(self, job_id: str) -> str:
        """HASH of an outboxed job's topic (``t``) and request envelope (``r``) (`schemas.jobs`)."""
        return f"{self.namespace}:job:{job_id}:request"

    @property
    def callbacks_stream(self) -> str:
        """STREAM of finished jobs whose completion webhook is to be delivered (field ``j`` = job id)."""
        return f"{self.namespace}:jobs:callbacks"

    def dlq_replays_key(self, model: str) -> str:
        """HASH ``partition:offset`` (in ``dlq_topic``) of a dead letter of ``model`` -> times it was replayed."""
        return f"{self.namespace}:dlq:{model}:replays"

    def apikey_key(self, key_id: str) -> str:
        """HASH of one API key: sha256 of its secret, name, models, rate, created/revoked (``schemas.apikeys``)."""
        return f"{self.namespace}:apikey:{key_id}"

    @property
    def apikeys_key(self) -> str:
        """SET of every API key id (revoked ones included)."""
        return f"{self.namespace}:apikeys"

    def key_bucket_key(self, key_id: str) -> str:
        """HASH token bucket (``t`` tokens, ``ts`` last refill ms) of one API key's rate limit."""
        return f"{self.namespace}:ratelimit:key:{key_id}"

    def model_bucket_key(self, model: str) -> str:
        """HASH token bucket of one model's rate limit (shared by every key and gateway)."""
        return f"{self.namespace}:ratelimit:model:{model}"

    def worker_key(self, worker_id: str) -> str:
        """Heartbeat hash of a worker."""
        return f"{self.namespace}:worker:{worker_id}"

    def residency_key(self, worker_id: str) -> str:
        """What a worker holds in memory (``schemas.residency.WorkerResidency`` as JSON)."""
        return f"{self.namespace}:residency:{worker_id}"

    def assignment_key(self, worker_id: str) -> str:
        """SET of the models assigned to a worker by the placement scheduler."""
        return f"{self.namespace}:assignment:{worker_id}"

    def placement_key(self, model: str) -> str:
        """HASH placement status of a model (state, workers, replicas, reason, ts_ms)."""
        return f"{self.namespace}:placement:{model}"

    def lease_key(self, topic: str, partition: int) -> str:
        """STRING id of the pool worker that consumes ``topic`` partition ``partition`` (valid while that
        worker's ``lease_holder_key`` exists)."""
        return f"{self.namespace}:lease:{topic}:{partition}"

    def lease_holder_key(self, worker_id: str) -> str:
        """STRING liveness of a pool worker's partition leases (PX = the lease TTL, refreshed every beat)."""
        return f"{self.namespace}:leaseholder:{worker_id}"

    @property
    def placement_epoch_key(self) -> str:
        """STRING counter bumped with every changed placement status (readers re-read placements when it moved)."""
        return f"{self.namespace}:placements:epoch"

    @property
    def placement_round_key(self) -> str:
        """STRING epoch ms of the placement scheduler's last round (it confirmed every placement status)."""
        return f"{self.namespace}:placements:round"

    @property
    def workers_key(self) -> str:
        """ZSET of worker ids scored by last heartbeat (epoch ms)."""
        return f"{self.namespace}:workers"

    def stats_index_key(self, model: str) -> str:
        """ZSET of the workers that reported service stats for ``model``, scored by report time (epoch ms)."""
        return f"{self.namespace}:stats:{model}"

    def stats_key(self, model: str, worker_id: str) -> str:
        """HASH of one worker's service stats for ``model`` (see `schemas.stats`)."""
        return f"{self.namespace}:stats:{model}:{worker_id}"

    @property
    def pins_key(self) -> str:
        """HASH model -> pinned replica count (manual overrides of the autoscaler)."""
        return f"{self.namespace}:autoscaler:pins"

    @property
    def autoscaler_leader_key(self) -> str:
        """STRING: holder id of the autoscalers' leader lease (PEXPIRE = the lease)."""
        return f"{self.namespace}:autoscaler:leader"

    def decision_key(self, model: str) -> str:
        """HASH of the autoscaler's last decision for ``model``."""
        return f"{self.namespace}:autoscaler:decision:{model}"

    @property
    def decision_round_key(self) -> str:
        """STRING epoch ms of the autoscaler's last round (EXPIRE): stored decisions are current while it exists."""
        return f"{self.namespace}:autoscaler:decisions:round"

    @property
    def inventory_index_key(self) -> str:
        """ZSET of the hosts that reported a GPU inventory, scored by report time (epoch ms)."""
        return f"{self.namespace}:inventory"

    def inventory_key(self, host: str) -> str:
        """HASH of one host's GPU inventory."""
        return f"{self.namespace}:inventory:{host}"
