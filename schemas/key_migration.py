"""The previous Redis key layout (keys without a hash tag) and where each of its keys goes in the current one.

Before every key carried a hash tag (see `schemas.names`), a namespace's keys were ``{ns}:PART...``; now they
are ``{ns}:{{ns.TAG}}...``, so an old key of the namespace is one that starts with ``{ns}:`` but not with
``{ns}:{``. :func:`classify` maps one old key to what the migration (`schemas.key_migrator`) does with it:

* ``move``: the key keeps its value and TTL under its new name: the registry, API keys, pins, DLQ replay
  counts, assignments, placements, rate-limit buckets, async jobs (hash, outboxed request, idempotency keys)
  and stored results and emitted markers (a result may be a job's, or a producer's fetched later);
* ``merge``: a SET of names (models, a model's versions, API key ids): moved, or its members added to the new
  set when the new one exists already (something was registered under the new layout meanwhile);
* ``split``: the one jobs callbacks stream, deadlines and outbox ZSETs of the namespace: each entry goes to its
  job's shard (``names.job_shard``);
* ``leave``: keys that only running processes write and read, which the new version's processes rewrite
  under the new names (heartbeats, stats, decisions, leases, reply streams...): nothing is lost without them;
* ``unknown``: anything else under ``{ns}:`` (not the fleet's): never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .constants import DEVICE_KINDS
from .names import Names


class Action(StrEnum):
    """What the migration does with one old-layout key."""

    MOVE = "move"
    MERGE = "merge"
    SPLIT = "split"
    LEAVE = "leave"
    UNKNOWN = "unknown"


class Split(StrEnum):
    """The namespace-wide job keys of the old layout that the new one keeps per job shard."""

    CALLBACKS = "callbacks"  # STREAM, field ``j`` = job id
    DEADLINES = "deadlines"  # ZSET job id -> deadline + grace
    OUTBOX = "outbox"  # ZSET job id -> when a sweep republishes it


#: Why the keys of each ``leave`` group need no migration.
LEAVE_REASONS = {
    "reply streams": "read only by the gateway or client process that created it, which the upgrade restarts "
    "with a new stream; expires",
    "heartbeats": "every running worker rewrites its heartbeat and residency each beat under the new names",
    "leases": "pool workers claim partitions again under the new names once the old holders' liveness lapses",
    "stats": "workers report service stats every interval; the old reports expire",
    "autoscaler rounds": "the autoscaler rewrites its decisions, leader lease and round marks every round",
    "inventory": "every autoscaler reports its GPU inventory every interval",
}


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """One old-layout key, what happens to it and the group it is counted in (``registry``, ``jobs`` ...)."""

    old: str
    action: Action
    group: str
    new: str = ""  # move, merge: the new name
    split: Split | None = None  # split: which shared job key


def old_prefix(names: Names) -> str:
    """``{ns}:``: every key of the namespace, old or new, starts with it."""
    return f"{names.namespace}:"


def old_models_key(names: Names) -> str:
    """The previous layout's SET of registered models: its presence says a Redis still holds old keys."""
    return f"{names.namespace}:models"


def old_marker_keys(names: Names) -> tuple[str, ...]:
    """The previous layout's index keys that a deployment with anything worth migrating has one of (models, API
    keys, pins)."""
    ns = names.namespace
    return old_models_key(names), f"{ns}:apikeys", f"{ns}:autoscaler:pins"


def is_old_key(names: Names, key: str) -> bool:
    """Whether ``key`` is a key of ``names``' namespace in the previous layout (no hash tag)."""
    prefix = old_prefix(names)
    return key.startswith(prefix) and not key.startswith(prefix + "{")


def classify(names: Names, key: str) -> KeyPlan | None:
    """What to do with ``key``; None when it is not an old-layout key of the namespace."""
    if not is_old_key(names, key):
        return None
    rest = key[len(old_prefix(names)) :]
    parts = rest.split(":")
    head = parts[0]

    def move(group: str, new: str) -> KeyPlan:
        return KeyPlan(key, Action.MOVE, group, new)

    def merge(group: str, new: str) -> KeyPlan:
        return KeyPlan(key, Action.MERGE, group, new)

    def leave(group: str) -> KeyPlan:
        return KeyPlan(key, Action.LEAVE, group)

    if rest == "models":
        return merge("registry", names.models_key)
    if head == "model" and len(parts) >= 3:
        return _model_key(names, key, parts)
    if rest == "registry:epoch":
        return move("registry", names.registry_epoch_key)
    if head in ("result", "emitted") and len(parts) >= 2:
        request_id = rest.split(":", 1)[1]
        new = names.result_key(request_id) if head == "result" else names.emitted_key(request_id)
        return move("results", new)
    if head == "job" and len(parts) == 2:
        return move("jobs", names.job_key(parts[1]))
    if head == "job" and len(parts) == 3 and parts[2] == "request":
        return move("jobs", names.job_request_key(parts[1]))
    if head == "idem" and len(parts) >= 3:
        owner, idempotency_key = rest.split(":", 2)[1:]
        return move("jobs", names.idempotency_key(idempotency_key, "" if owner == "-" else owner))
    if head == "jobs" and len(parts) == 2 and parts[1] in tuple(Split):
        return KeyPlan(key, Action.SPLIT, "jobs", split=Split(parts[1]))
    if rest == "apikeys":
        return merge("api keys", names.apikeys_key)
    if head == "apikey" and len(parts) == 2:
        return move("api keys", names.apikey_key(parts[1]))
    if head == "ratelimit" and len(parts) == 3 and parts[1] in ("key", "model"):
        new = names.key_bucket_key(parts[2]) if parts[1] == "key" else names.model_bucket_key(parts[2])
        return move("rate limits", new)
    if head == "dlq" and len(parts) == 3 and parts[2] == "replays":
        return move("dlq replays", names.dlq_replays_key(parts[1]))
    if head == "assignment" and len(parts) == 2:
        return move("placement", names.assignment_key(parts[1]))
    if head == "placement" and len(parts) == 2:
        return move("placement", names.placement_key(parts[1]))
    if rest == "placements:epoch":
        return move("placement", names.placement_epoch_key)
    if rest == "autoscaler:pins":
        return move("autoscaler pins", names.pins_key)
    return _left(key, rest, parts)


def _model_key(names: Names, key: str, parts: list[str]) -> KeyPlan | None:
    model, tail = parts[1], parts[2:]
    new = ""
    if tail == ["versions"]:
        return KeyPlan(key, Action.MERGE, "registry", names.versions_key(model))
    if tail in (["default"], ["traffic"], ["previous_default"]):
        new = {
            "default": names.default_key,
            "traffic": names.traffic_key,
            "previous_default": names.previous_default_key,
        }[tail[0]](model)
    elif len(tail) == 2 and tail[0] == "v":
        new = names.record_key(model, tail[1])
    elif len(tail) == 3 and tail[0] == "v" and tail[2] == "load_failed":
        new = names.load_failure_key(model, tail[1])
    elif len(tail) == 4 and tail[0] == "v" and tail[2] == "measured" and tail[3] in DEVICE_KINDS:
        new = names.measured_key(model, tail[1], tail[3])
    if not new:
        return KeyPlan(key, Action.UNKNOWN, "unknown")
    return KeyPlan(key, Action.MOVE, "registry", new)


def _left(key: str, rest: str, parts: list[str]) -> KeyPlan:
    head = parts[0]
    group = ""
    if head == "replies" and len(parts) >= 2 or head == "client" and parts[-1] == "replies":
        group = "reply streams"
    elif head in ("worker", "residency") and len(parts) >= 2 or rest == "workers":
        group = "heartbeats"
    elif head in ("lease", "leaseholder") and len(parts) >= 2:
        group = "leases"
    elif head == "stats" and len(parts) >= 2:
        group = "stats"
    elif rest in ("placements:round", "autoscaler:leader", "autoscaler:decisions:round") or (
        head == "autoscaler" and len(parts) >= 3 and parts[1] == "decision"
    ):
        group = "autoscaler rounds"
    elif head == "inventory":
        group = "inventory"
    if not group:
        return KeyPlan(key, Action.UNKNOWN, "unknown")
    return KeyPlan(key, Action.LEAVE, group)


def split_target(names: Names, split: Split, job_id: str) -> str:
    """The new key of ``job_id``'s shard that holds its entry of the old shared ``split`` key."""
    shard = names.job_shard(job_id)
    if split is Split.CALLBACKS:
        return names.callbacks_stream(shard)
    if split is Split.DEADLINES:
        return names.job_deadlines_key(shard)
    return names.job_outbox_key(shard)
