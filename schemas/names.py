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
      Every key starts with ``{ns}:`` and carries a hash tag ``{{ns}.PART}`` (written ``[PART]`` below): the
      keys that one Lua script or MULTI touches share PART, hence one hash slot, so the fleet runs on a Redis
      Cluster as on one server. Tags: ``registry`` (the whole registry: small, read through the epoch cache;
      register/remove/default/split/rollback change several of its keys at once), ``replies.{gw}`` (a
      gateway's reply stream, alone), ``jobs.{shard}`` (``JOB_SHARDS`` job shards: a job's keys, its result
      and emitted markers and the shard's deadlines, outbox and callbacks stream; shard = crc32(job id) mod
      ``JOB_SHARDS``; an idempotency key's shard is that of "owner:key", and its job id is drawn in it),
      ``workers``, ``placement``, ``leases``, ``apikeys``, ``autoscaler``, ``inventory`` (small control
      sets), ``stats`` (the stats change stream), ``stats.{m}``, ``decision.{m}``, ``dlq.{m}``,
      ``ratelimit.key.{id}``, ``ratelimit.model.{m}``.

      [registry]:models                SET of registered model names
      [registry]:model:{m}:versions    SET of the model's versions
      [registry]:model:{m}:v:{v}       msgpack ModelRecord (immutable once written)
      [registry]:model:{m}:v:{v}:measured:{kind}  footprint a worker measured after loading, on a device of
                                       that kind (cpu or gpu; bytes)
      [registry]:model:{m}:v:{v}:load_failed STRING (JSON `schemas.load_failures.LoadFailure`: reason, ts_ms,
                                       worker; EXPIRE 60 s) the last failed load of the version; deleted by a
                                       load that succeeds. The gateway's model readiness reads it
      [registry]:model:{m}:default     the version served when none is asked for
      [registry]:model:{m}:traffic     HASH version -> percent of unversioned requests (a canary / A-B
                                       split; absent = all to the default; see `schemas.traffic`)
      [registry]:model:{m}:previous_default  the default before the last change: what `rollback` returns to
      [registry]:epoch                 STRING counter bumped in the same step as every registry write a reader
                                       may have cached (register, remove, default, split, rollback, a changed
                                       measured size): readers re-read only when it moved (`schemas.registry`)
      [replies.{gateway_id}]           STREAM of replies for one gateway process (a sync reply is this
                                       entry only: the gateway drops a duplicate or late reply by id)
      [client.{client_id}]:replies     STREAM of replies for one direct producer client (`fleet.producer`)
      [jobs.{s}]:result:{request_id}   first result stored for a request whose result is fetched later (an
                                       async job's result or CANCELLED marker, a producer's result-kind
                                       request, a topic reply): dedups redelivery
      [jobs.{s}]:emitted:{request_id}  marker: the request's first result was produced to its reply topic
      [jobs.{s}]:job:{job_id}          HASH of an async job (EXPIRE = job TTL; fields in `schemas.jobs`)
      [jobs.{s}]:idem:{owner}:{key}    STRING idempotency key of one API key id ("-" without auth) ->
                                       "job_id fingerprint" (EXPIRE = job TTL); s is the shard of "owner:key"
      [jobs.{s}]:callbacks             STREAM of the shard's finished jobs that have a webhook (field ``j`` =
                                       job id); consumer group ``webhooks`` of the gateways delivers them
      [jobs.{s}]:deadlines             ZSET job id -> deadline + grace (epoch ms) of the shard's jobs with a
                                       webhook: a gateway expires the ones no worker answered (`EXPIRE_SCRIPT`)
      [jobs.{s}]:outbox                ZSET job id -> when a gateway's sweep (re)publishes it (epoch ms): jobs
                                       stored but not known to be published yet (`schemas.jobs`)
      [jobs.{s}]:job:{job_id}:request  HASH of an outboxed job: ``t`` topic, ``r`` request envelope (EXPIRE = job
                                       TTL; deleted once published)
      [apikeys]:apikey:{key_id}        HASH of an API key: sha256 of its secret, name, models, rate, created_ms,
                                       revoked_ms (`schemas.apikeys`; the secret is never stored)
      [apikeys]:apikeys                SET of every API key id (revoked ones included)
      [ratelimit.key.{key_id}]         HASH token bucket of a key's rate limit (`gateway.ratelimit`)
      [ratelimit.model.{m}]            HASH token bucket of a model's rate limit (`gateway.ratelimit`)
      [dlq.{m}]:replays                HASH "partition:offset" of a dead letter of model m in {ns}.dlq -> times
                                       `fleet dlq replay` re-sent it
      [workers]:worker:{worker_id}     HASH heartbeat of a worker (state, models, partitions)
      [workers]:workers                ZSET of worker ids by last heartbeat (ms)
      [workers]:residency:{worker_id}  STRING (JSON `schemas.residency.WorkerResidency`, EXPIRE 3x heartbeat):
                                       the worker's memory budget and its resident models (size, last use)
      [placement]:assignment:{worker_id}  SET of the models the placement scheduler assigned to a worker that
                                       follows its assignment (no EXPIRE: survives restarts of either side)
      [placement]:placement:{m}        HASH placement status of a model (`autoscaler.placement_store`): state
                                       (placed, partial, schedule_failed, idle), workers, replicas, reason, ts_ms
                                       (written when it changes; the last round's time is in [placement]:round)
      [placement]:round                STRING epoch ms of the placement scheduler's last round (it confirmed
                                       every stored placement status then)
      [placement]:epoch                STRING counter bumped with every changed placement status (in the same
                                       transaction): pool workers re-read their models' placements when it moved
      {ns}:assignments                 pub/sub channel (no key): `schemas.assignment_news` (placement changes)
      [leases]:lease:{topic}:{p}       STRING id of the pool worker consuming that partition (`workers.leases`:
                                       valid while its holder's leaseholder key exists; claimed when free or its
                                       holder's liveness lapsed, deleted on a move; no PX of its own)
      [leases]:leaseholder:{worker_id} STRING liveness of a pool worker's leases (PX 3x heartbeat, refreshed
                                       every beat): its leases are taken over once it is gone
      [stats.{m}]:workers              ZSET worker id -> epoch ms of its last service-stats report
      [stats.{m}]:worker:{worker_id}   HASH one worker's service stats for a model (EXPIRE; fields in
                                       `schemas.stats`): written by workers, read by the autoscaler
      [stats]:changes                  STREAM one entry per write of a worker's reports (``worker``, ``models``):
                                       the autoscaler reads again only the reports named since its last read
      [autoscaler]:pins                HASH model -> pinned replicas (manual override; absent = autoscaled)
      [decision.{m}]:decision          HASH the autoscaler's last decision for a model (EXPIRE): desired,
                                       actual, reason, inputs (JSON), capped_by_partitions, pinned, ts_ms
                                       (written when it changes; current while [autoscaler]:decisions:round exists)
      [autoscaler]:decisions:round     STRING epoch ms of the autoscaler's last round (EXPIRE): the stored
                                       decisions are current while it exists
      [autoscaler]:leader              STRING id of the autoscaler that holds the leader lease (PEXPIRE =
                                       lease; `autoscaler.leader`): only that one scales and places
      [inventory]:hosts                ZSET host -> epoch ms of its last GPU inventory report
      [inventory]:host:{host}          HASH the GPU inventory of one host (EXPIRE; see `autoscaler.inventory`)
      [pipelines]:pipelines            SET of applied pipeline names (`schemas.pipelines`)
      [pipelines]:pipeline:{p}:serial  STRING counter: the last version number given to pipeline p
      [pipelines]:pipeline:{p}:v:{n}   msgpack version n of pipeline p (its steps and outputs; immutable)
      [pipelines]:pipeline:{p}:current STRING the version of pipeline p that requests run
      [jobs.{s}]:step:{rid}:{step}     HASH the first result of one step of pipeline request rid (``r``), the
                                       token of the step record that stored it and alone passes it on (``o``),
                                       and whether its outputs were passed on (``e``); EXPIRE past the deadline
      [jobs.{s}]:join:{rid}:{step}     HASH what a join step of pipeline request rid has gathered: one field per
                                       step it waits for (its tensors), ``fired``/``done`` once complete and
                                       passed on; EXPIRE past the deadline (`workers.steps`)

Model names never contain ':' or '}', so a model's keys cannot collide with another's.
"""

from __future__ import annotations

import re
import uuid
import zlib
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

#: Async jobs (and every per-request marker) are spread over this many job shards, each its own hash slot
#: (``{ns}:{ns.jobs.N}``): a job's keys share its shard's slot with the shard's callbacks stream, deadlines
#: and outbox, so each job script touches one slot. Fixed, because every process must agree on it.
JOB_SHARDS = 8


def _shard(value: str) -> int:
    return zlib.crc32(value.encode()) % JOB_SHARDS


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

    # Hash tags -------------------------------------------------------------
    def tag(self, part: str) -> str:
        """``{ns}:{{ns.part}}``: the prefix of every key of one hash slot (on a Redis Cluster, a script or a
        transaction may touch only the keys of one slot: keys that one touches share ``part``)."""
        return f"{self.namespace}:{{{self.namespace}.{part}}}"

    @property
    def _registry(self) -> str:
        return self.tag("registry")

    @staticmethod
    def job_shard(job_id: str) -> int:
        """The job shard of a request id (``JOB_SHARDS`` of them): its job, result and outbox keys live there."""
        return _shard(job_id)

    @property
    def job_shards(self) -> range:
        """Every job shard (a gateway sweeps and reads each one's sets and callbacks stream)."""
        return range(JOB_SHARDS)

    def _shard_tag(self, shard: int) -> str:
        if not 0 <= shard < JOB_SHARDS:
            raise ValueError(f"job shard {shard} is not in 0..{JOB_SHARDS - 1}")
        return self.tag(f"jobs.{shard}")

    def _job_tag(self, job_id: str) -> str:
        return self._shard_tag(_shard(job_id))

    def new_job_id(self, idempotency_key: str | None = None, owner: str = "") -> str:
        """A random job id (uuid4 hex); with an idempotency key, one in that key's job shard, so the submit
        script's keys (idempotency key, job, outbox) share one hash slot."""
        if idempotency_key is None:
            return uuid.uuid4().hex
        want = _shard(f"{owner or '-'}:{idempotency_key}")
        while True:  # JOB_SHARDS tries on average
            job_id = uuid.uuid4().hex
            if _shard(job_id) == want:
                return job_id

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
        return f"{self._registry}:models"

    def versions_key(self, model: str) -> str:
        """SET of a model's versions."""
        return f"{self._registry}:model:{model}:versions"

    def record_key(self, model: str, version: str) -> str:
        """msgpack ModelRecord of one version."""
        return f"{self._registry}:model:{model}:v:{version}"

    def measured_key(self, model: str, version: str, kind: str = CPU) -> str:
        """Measured footprint in bytes of a loaded version on a ``kind`` device (written by workers)."""
        if kind not in DEVICE_KINDS:
            raise ValueError(f"device kind {kind!r} is not one of {', '.join(DEVICE_KINDS)}")
        return f"{self._registry}:model:{model}:v:{version}:measured:{kind}"

    def load_failure_key(self, model: str, version: str) -> str:
        """The last failed load of a version (reason, time, worker; deleted once a worker loads it)."""
        return f"{self._registry}:model:{model}:v:{version}:load_failed"

    def default_key(self, model: str) -> str:
        """Default version pointer of a model."""
        return f"{self._registry}:model:{model}:default"

    def traffic_key(self, model: str) -> str:
        """HASH version -> percent: the traffic split of a model's unversioned requests."""
        return f"{self._registry}:model:{model}:traffic"

    def previous_default_key(self, model: str) -> str:
        """The default version before the last change of a model's default or split (rollback target)."""
        return f"{self._registry}:model:{model}:previous_default"

    @property
    def registry_epoch_key(self) -> str:
        """STRING counter bumped by every registry write a reader may have cached (`schemas.registry`)."""
        return f"{self._registry}:epoch"

    def reply_stream(self, gateway_id: str) -> str:
        """Reply stream read by one gateway process."""
        return self.tag(f"replies.{gateway_id}")

    def client_reply_stream(self, client_id: str) -> str:
        """Reply stream read by one direct Kafka producer client (``fleet.producer.FleetProducer``)."""
        if not _CLIENT_ID.match(client_id):
            raise ValueError(f"invalid client id {client_id!r}: use 1-128 of [A-Za-z0-9_.-]")
        return f"{self.tag(f'client.{client_id}')}:replies"

    def result_key(self, request_id: str) -> str:
        """First stored result of a request (later duplicates are dropped)."""
        return f"{self._job_tag(request_id)}:result:{request_id}"

    def emitted_key(self, request_id: str) -> str:
        """Marker set once a request's first result was produced to its reply topic (reply kind ``topic``)."""
        return f"{self._job_tag(request_id)}:emitted:{request_id}"

    def job_key(self, job_id: str) -> str:
        """HASH of an async job (its id is the request id; see `schemas.jobs`)."""
        return f"{self._job_tag(job_id)}:job:{job_id}"

    def idempotency_key(self, key: str, owner: str = "") -> str:
        """Client idempotency key -> the job it created (``"job_id fingerprint"``).

        ``owner`` is the API key id of the caller ("" without auth): two tenants' identical
        idempotency keys are two different keys, so one can never replay or probe the other's job.
        """
        owner = owner or "-"
        return f"{self._shard_tag(_shard(owner + ':' + key))}:idem:{owner}:{key}"

    def job_deadlines_key(self, shard: int) -> str:
        """ZSET of a job shard's jobs with a webhook, scored by when to give up on a worker answer (`schemas.jobs`)."""
        return f"{self._shard_tag(shard)}:deadlines"

    def job_outbox_key(self, shard: int) -> str:
        """ZSET of a job shard's stored jobs not known to be published yet, scored by when a sweep (re)publishes
        them."""
        return f"{self._shard_tag(shard)}:outbox"

    def job_request_key(self, job_id: str) -> str:
        """HASH of an outboxed job's topic (``t``) and request envelope (``r``) (`schemas.jobs`)."""
        return f"{self._job_tag(job_id)}:job:{job_id}:request"

    def callbacks_stream(self, shard: int) -> str:
        """STREAM of a job shard's finished jobs whose completion webhook is to be delivered (field ``j`` = job id)."""
        return f"{self._shard_tag(shard)}:callbacks"

    def dlq_replays_key(self, model: str) -> str:
        """HASH ``partition:offset`` (in ``dlq_topic``) of a dead letter of ``model`` -> times it was replayed."""
        return f"{self.tag(f'dlq.{model}')}:replays"

    def apikey_key(self, key_id: str) -> str:
        """HASH of one API key: sha256 of its secret, name, models, rate, created/revoked (``schemas.apikeys``)."""
        return f"{self.tag('apikeys')}:apikey:{key_id}"

    @property
    def apikeys_key(self) -> str:
        """SET of every API key id (revoked ones included)."""
        return f"{self.tag('apikeys')}:apikeys"

    def key_bucket_key(self, key_id: str) -> str:
        """HASH token bucket (``t`` tokens, ``ts`` last refill ms) of one API key's rate limit."""
        return self.tag(f"ratelimit.key.{key_id}")

    def model_bucket_key(self, model: str) -> str:
        """HASH token bucket of one model's rate limit (shared by every key and gateway)."""
        return self.tag(f"ratelimit.model.{model}")

    def worker_key(self, worker_id: str) -> str:
        """Heartbeat hash of a worker."""
        return f"{self.tag('workers')}:worker:{worker_id}"

    def residency_key(self, worker_id: str) -> str:
        """What a worker holds in memory (``schemas.residency.WorkerResidency`` as JSON)."""
        return f"{self.tag('workers')}:residency:{worker_id}"

    def assignment_key(self, worker_id: str) -> str:
        """SET of the models assigned to a worker by the placement scheduler."""
        return f"{self.tag('placement')}:assignment:{worker_id}"

    def placement_key(self, model: str) -> str:
        """HASH placement status of a model (state, workers, replicas, reason, ts_ms)."""
        return f"{self.tag('placement')}:placement:{model}"

    def lease_key(self, topic: str, partition: int) -> str:
        """STRING id of the pool worker that consumes ``topic`` partition ``partition`` (valid while that
        worker's ``lease_holder_key`` exists)."""
        return f"{self.tag('leases')}:lease:{topic}:{partition}"

    def lease_holder_key(self, worker_id: str) -> str:
        """STRING liveness of a pool worker's partition leases (PX = the lease TTL, refreshed every beat)."""
        return f"{self.tag('leases')}:leaseholder:{worker_id}"

    @property
    def placement_epoch_key(self) -> str:
        """STRING counter bumped with every changed placement status (readers re-read placements when it moved)."""
        return f"{self.tag('placement')}:epoch"

    @property
    def placement_round_key(self) -> str:
        """STRING epoch ms of the placement scheduler's last round (it confirmed every placement status)."""
        return f"{self.tag('placement')}:round"

    @property
    def assignments_channel(self) -> str:
        """Pub/sub channel of placement news (`schemas.assignment_news`); a channel needs no hash tag."""
        return f"{self.namespace}:assignments"

    @property
    def wake_channel(self) -> str:
        """Pub/sub channel: ``topic:partition`` a record just landed on (`schemas.wake_notes`; gateways, the direct
        producer and the autoscaler publish, at most once a second per partition; pool workers fetch a dormant
        partition at once). A channel needs no hash tag."""
        return f"{self.namespace}:wake"

    @property
    def workers_key(self) -> str:
        """ZSET of worker ids scored by last heartbeat (epoch ms)."""
        return f"{self.tag('workers')}:workers"

    def stats_index_key(self, model: str) -> str:
        """ZSET of the workers that reported service stats for ``model``, scored by report time (epoch ms)."""
        return f"{self.tag(f'stats.{model}')}:workers"

    def stats_key(self, model: str, worker_id: str) -> str:
        """HASH of one worker's service stats for ``model`` (see `schemas.stats`)."""
        return f"{self.tag(f'stats.{model}')}:worker:{worker_id}"

    @property
    def stats_changes_key(self) -> str:
        """STREAM of service-stats writes: each entry names a worker and the models whose reports it changed."""
        return f"{self.tag('stats')}:changes"

    @property
    def pins_key(self) -> str:
        """HASH model -> pinned replica count (manual overrides of the autoscaler)."""
        return f"{self.tag('autoscaler')}:pins"

    @property
    def autoscaler_leader_key(self) -> str:
        """STRING: holder id of the autoscalers' leader lease (PEXPIRE = the lease)."""
        return f"{self.tag('autoscaler')}:leader"

    def decision_key(self, model: str) -> str:
        """HASH of the autoscaler's last decision for ``model``."""
        return f"{self.tag(f'decision.{model}')}:decision"

    @property
    def decision_round_key(self) -> str:
        """STRING epoch ms of the autoscaler's last round (EXPIRE): stored decisions are current while it exists."""
        return f"{self.tag('autoscaler')}:decisions:round"

    @property
    def inventory_index_key(self) -> str:
        """ZSET of the hosts that reported a GPU inventory, scored by report time (epoch ms)."""
        return f"{self.tag('inventory')}:hosts"

    def inventory_key(self, host: str) -> str:
        """HASH of one host's GPU inventory."""
        return f"{self.tag('inventory')}:host:{host}"

    @property
    def pipelines_key(self) -> str:
        """SET of the applied pipelines' names."""
        return f"{self.tag('pipelines')}:pipelines"

    def pipeline_serial_key(self, pipeline: str) -> str:
        """STRING counter of a pipeline's versions (the last number given)."""
        return f"{self.tag('pipelines')}:pipeline:{pipeline}:serial"

    def pipeline_key(self, pipeline: str, version: int) -> str:
        """msgpack of one version of a pipeline (`schemas.pipelines`; immutable)."""
        return f"{self.tag('pipelines')}:pipeline:{pipeline}:v:{version}"

    def pipeline_current_key(self, pipeline: str) -> str:
        """STRING: the version of a pipeline that new requests run."""
        return f"{self.tag('pipelines')}:pipeline:{pipeline}:current"

    def step_key(self, request_id: str, step: str) -> str:
        """HASH: one step's first result for the pipeline request ``request_id`` and its passed-on marker."""
        return f"{self._job_tag(request_id)}:step:{request_id}:{step}"

    def join_key(self, request_id: str, step: str) -> str:
        """HASH: what the join ``step`` (or the pipeline's outputs) of ``request_id`` has gathered so far."""
        return f"{self._job_tag(request_id)}:join:{request_id}:{step}"
