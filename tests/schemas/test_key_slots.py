"""Every Lua script and MULTI of the fleet touches keys of one Redis Cluster hash slot (no server needed)."""

from __future__ import annotations

import uuid

import pytest
from redis.crc import key_slot

from schemas import Names
from schemas.names import JOB_SHARDS

NAMES = Names("fleet")
IDS = [uuid.uuid4().hex for _ in range(64)] + ["a", "dup", "run-1-17", "job-0"]


def _one_slot(*keys: str) -> None:
    slots = {key_slot(k.encode()) for k in keys}
    assert len(slots) == 1, f"{keys} span slots {slots}"


@pytest.mark.parametrize("request_id", IDS)
def test_job_scripts_touch_one_slot(request_id: str) -> None:
    n, shard = NAMES, NAMES.job_shard(request_id)
    result, job = n.result_key(request_id), n.job_key(request_id)
    callbacks, deadlines, outbox = n.callbacks_stream(shard), n.job_deadlines_key(shard), n.job_outbox_key(shard)
    _one_slot(result, job, callbacks)  # the worker's deliver script, the gateway's cancel script
    _one_slot(result, n.emitted_key(request_id))  # deliver_topic
    _one_slot(deadlines, job, result, callbacks)  # expire
    _one_slot(job, deadlines, outbox, n.job_request_key(request_id))  # submit without an idempotency key
    _one_slot(outbox, n.job_request_key(request_id))  # published (MULTI)


@pytest.mark.parametrize("key", ["k1", "retry-7", "x" * 100, "ü"])
@pytest.mark.parametrize("owner", ["", "key-id-1"])
def test_an_idempotent_submit_touches_one_slot(key: str, owner: str) -> None:
    n = NAMES
    job_id = n.new_job_id(key, owner)
    shard = n.job_shard(job_id)
    _one_slot(
        n.job_key(job_id), n.job_deadlines_key(shard), n.job_outbox_key(shard), n.job_request_key(job_id),
        n.idempotency_key(key, owner),
    )  # fmt: skip


def test_job_shards_spread_and_claim_pairs_group_by_shard() -> None:
    shards = {NAMES.job_shard(i) for i in IDS}
    assert shards == set(range(JOB_SHARDS))  # 68 ids reach every shard
    assert len({key_slot(NAMES.callbacks_stream(s).encode()) for s in NAMES.job_shards}) == JOB_SHARDS
    with pytest.raises(ValueError):
        NAMES.callbacks_stream(JOB_SHARDS)


def test_registry_writes_touch_one_slot() -> None:
    n, m = NAMES, "resnet-50"
    _one_slot(
        n.models_key, n.versions_key(m), n.record_key(m, "2"), n.default_key(m), n.previous_default_key(m),
        n.traffic_key(m), n.registry_epoch_key, n.measured_key(m, "2", "cpu"), n.measured_key(m, "2", "gpu"),
        n.load_failure_key(m, "2"), n.record_key("other", "1"), n.versions_key("other"),
    )  # fmt: skip


def test_control_plane_transactions_touch_one_slot() -> None:
    n = NAMES
    _one_slot(n.apikey_key("k1"), n.apikeys_key)
    _one_slot(n.assignment_key("w1"), n.placement_key("m"), n.placement_epoch_key, n.placement_round_key)
    _one_slot(n.lease_key("fleet.requests.m", 0), n.lease_key("fleet.bulk.x", 3), n.lease_holder_key("w9"))
    _one_slot(n.worker_key("w1"), n.workers_key, n.residency_key("w2"))
    _one_slot(n.stats_index_key("m"), n.stats_key("m", "w1"))
    _one_slot(n.inventory_index_key, n.inventory_key("host-1"))
    _one_slot(n.pins_key, n.autoscaler_leader_key, n.decision_round_key)


def test_hot_keys_are_spread() -> None:
    """A gateway's reply stream, a model's buckets, stats and decision each hash on their own tag."""
    n = NAMES
    streams = {key_slot(n.reply_stream(f"gw-{i}").encode()) for i in range(16)}
    assert len(streams) > 8
    assert key_slot(n.model_bucket_key("a").encode()) != key_slot(n.model_bucket_key("b").encode())
    assert n.reply_stream("gw-1").startswith("fleet:{fleet.replies.gw-1}")
    assert all(k.startswith("fleet:") for k in (n.models_key, n.result_key("x"), n.key_bucket_key("k")))
