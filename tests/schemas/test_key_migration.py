"""Migration of a namespace's Redis keys from the previous layout (no hash tag) to the hash-tagged one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from fleet.local.servers import free_port
from schemas import FleetSettings, Names, RedisSettings
from schemas.jobs import CALLBACK_GROUP
from schemas.key_migration import Action, Split, classify
from schemas.key_migrator import KeyMigrator, MigrationReport, old_layout_only, warn_if_old_layout
from tests.conftest import REDIS_KINDS, single_or_cluster
from tests.fleet.cli_util import connection_args, run_fleet

N = Names("ns")


@pytest.mark.parametrize(
    ("old", "action", "new"),
    [
        ("ns:models", Action.MERGE, N.models_key),
        ("ns:model:m:versions", Action.MERGE, N.versions_key("m")),
        ("ns:model:m:v:1", Action.MOVE, N.record_key("m", "1")),
        ("ns:model:m:v:1:measured:gpu", Action.MOVE, N.measured_key("m", "1", "gpu")),
        ("ns:model:m:v:1:load_failed", Action.MOVE, N.load_failure_key("m", "1")),
        ("ns:model:m:default", Action.MOVE, N.default_key("m")),
        ("ns:model:m:traffic", Action.MOVE, N.traffic_key("m")),
        ("ns:model:m:previous_default", Action.MOVE, N.previous_default_key("m")),
        ("ns:registry:epoch", Action.MOVE, N.registry_epoch_key),
        ("ns:result:r1", Action.MOVE, N.result_key("r1")),
        ("ns:emitted:r1", Action.MOVE, N.emitted_key("r1")),
        ("ns:job:j1", Action.MOVE, N.job_key("j1")),
        ("ns:job:j1:request", Action.MOVE, N.job_request_key("j1")),
        ("ns:idem:-:a:b", Action.MOVE, N.idempotency_key("a:b")),
        ("ns:idem:k7:a", Action.MOVE, N.idempotency_key("a", "k7")),
        ("ns:apikeys", Action.MERGE, N.apikeys_key),
        ("ns:apikey:k7", Action.MOVE, N.apikey_key("k7")),
        ("ns:ratelimit:key:k7", Action.MOVE, N.key_bucket_key("k7")),
        ("ns:ratelimit:model:m", Action.MOVE, N.model_bucket_key("m")),
        ("ns:dlq:m:replays", Action.MOVE, N.dlq_replays_key("m")),
        ("ns:assignment:w1", Action.MOVE, N.assignment_key("w1")),
        ("ns:placement:m", Action.MOVE, N.placement_key("m")),
        ("ns:placements:epoch", Action.MOVE, N.placement_epoch_key),
        ("ns:autoscaler:pins", Action.MOVE, N.pins_key),
        ("ns:jobs:outbox", Action.SPLIT, ""),
        ("ns:replies:gw-1", Action.LEAVE, ""),
        ("ns:client:c1:replies", Action.LEAVE, ""),
        ("ns:worker:w1", Action.LEAVE, ""),
        ("ns:workers", Action.LEAVE, ""),
        ("ns:lease:ns.requests.m:0", Action.LEAVE, ""),
        ("ns:stats:m:w1", Action.LEAVE, ""),
        ("ns:autoscaler:decision:m", Action.LEAVE, ""),
        ("ns:inventory:host1", Action.LEAVE, ""),
        ("ns:model:m:v:1:measured:tpu", Action.UNKNOWN, ""),
        ("ns:someone-else", Action.UNKNOWN, ""),
    ],
)
def test_each_old_key_has_its_place(old: str, action: Action, new: str) -> None:
    plan = classify(N, old)
    assert plan is not None and (plan.action, plan.new) == (action, new)


@pytest.mark.parametrize("key", [N.models_key, N.job_key("j1"), "ns2:models", "nsx", "other:ns:models"])
def test_new_layout_and_other_namespaces_are_not_old_keys(key: str) -> None:
    assert classify(N, key) is None


# --- on a server -------------------------------------------------------------------------------------------
redis_url = pytest.fixture(params=REDIS_KINDS, name="redis_url")(single_or_cluster)

#: Two job ids in different job shards (so the shared job keys are really split).
J1, J2 = "a" * 32, next(f"{i:032x}" for i in range(100) if Names.job_shard(f"{i:032x}") != Names.job_shard("a" * 32))


async def write_old_layout(redis: Any, ns: str) -> None:
    """Keys as the previous version wrote them (with the TTLs it gave them)."""
    await redis.sadd(f"{ns}:models", "tiny")
    await redis.sadd(f"{ns}:model:tiny:versions", "1")
    await redis.set(f"{ns}:model:tiny:v:1", b"\x81record")
    await redis.set(f"{ns}:model:tiny:default", "1")
    await redis.set(f"{ns}:model:tiny:previous_default", "0")
    await redis.set(f"{ns}:model:tiny:v:1:measured:cpu", "1234")
    await redis.set(f"{ns}:model:tiny:v:1:load_failed", "{}", ex=60)
    await redis.set(f"{ns}:registry:epoch", "5")
    await redis.hset(f"{ns}:apikey:k1", mapping={"name": "ci", "sha256": "00"})
    await redis.hset(f"{ns}:apikey:k2", mapping={"name": "half-moved"})
    await redis.sadd(f"{ns}:apikeys", "k1", "k2")
    await redis.hset(f"{ns}:autoscaler:pins", "tiny", "2")
    await redis.hset(f"{ns}:dlq:tiny:replays", "0:7", "1")
    await redis.sadd(f"{ns}:assignment:w1", "tiny")
    await redis.hset(f"{ns}:placement:tiny", mapping={"state": "placed"})
    await redis.hset(f"{ns}:job:{J1}", mapping={"model": "tiny"})
    await redis.expire(f"{ns}:job:{J1}", 3600)
    await redis.hset(f"{ns}:job:{J1}:request", mapping={"t": "topic", "r": b"req"})
    await redis.expire(f"{ns}:job:{J1}:request", 3600)
    await redis.set(f"{ns}:idem:-:key-1", f"{J1} fp", ex=3600)
    await redis.set(f"{ns}:result:{J2}", b"answer", ex=600)
    await redis.set(f"{ns}:emitted:{J2}", b"1", ex=600)
    await redis.zadd(f"{ns}:jobs:outbox", {J1: 1000, J2: 2000})
    await redis.zadd(f"{ns}:jobs:deadlines", {J1: 5000})
    stream = f"{ns}:jobs:callbacks"
    for job_id in ("acked", "pending", "new"):
        await redis.xadd(stream, {"j": job_id})
    await redis.xgroup_create(stream, CALLBACK_GROUP, id="0")
    delivered = await redis.xreadgroup(CALLBACK_GROUP, "gw", {stream: ">"}, count=2)
    await redis.xack(stream, CALLBACK_GROUP, delivered[0][1][0][0])  # "acked" done, "pending" delivered only
    await redis.hset(f"{ns}:worker:w1", "state", "ready")
    await redis.pexpire(f"{ns}:worker:w1", 6000)
    await redis.zadd(f"{ns}:workers", {"w1": 1})
    await redis.set(f"{ns}:lease:{ns}.requests.tiny:0", "w1")
    await redis.set(f"{ns}:not-ours", "x")


async def snapshot(redis: Any, ns: str) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key of the namespace: its DUMP and whether it has a TTL."""
    keys = [key async for key in redis.scan_iter(match=f"{ns}:*", count=1000)]
    return {bytes(k): (await redis.dump(k), await redis.pttl(k) > 0) for k in keys}


async def test_old_keys_move_to_their_new_names_with_their_ttls_once(redis_client: Any, names: Names) -> None:
    r, n, ns = redis_client, names, names.namespace
    await write_old_layout(r, ns)
    # Written under the new layout meanwhile: a model registered (the sets merge), a conflicting rollback target
    # (the new one is kept), and an API key whose move was cut short after its RESTORE (identical: finished).
    await r.sadd(n.models_key, "other")
    await r.set(n.previous_default_key("tiny"), "9")
    await r.hset(n.apikey_key("k2"), mapping={"name": "half-moved"})
    assert await old_layout_only(r, n) is False  # the new registry exists too: services do not warn

    report = await KeyMigrator(r, n).run()

    assert await r.smembers(n.models_key) == {b"tiny", b"other"}
    assert await r.smembers(n.versions_key("tiny")) == {b"1"}
    assert await r.get(n.record_key("tiny", "1")) == b"\x81record"
    assert await r.get(n.default_key("tiny")) == b"1"
    assert await r.get(n.measured_key("tiny", "1")) == b"1234"
    assert 0 < await r.pttl(n.load_failure_key("tiny", "1")) <= 60_000
    assert await r.get(n.registry_epoch_key) == b"6"  # moved, then bumped so cached registries are re-read
    assert await r.hgetall(n.apikey_key("k1")) == {b"name": b"ci", b"sha256": b"00"}
    assert await r.smembers(n.apikeys_key) == {b"k1", b"k2"}
    assert await r.hgetall(n.pins_key) == {b"tiny": b"2"}
    assert await r.hgetall(n.dlq_replays_key("tiny")) == {b"0:7": b"1"}
    assert await r.smembers(n.assignment_key("w1")) == {b"tiny"}
    assert await r.hgetall(n.placement_key("tiny")) == {b"state": b"placed"}
    assert await r.get(n.placement_epoch_key) == b"1"
    assert 3_500_000 < await r.pttl(n.job_key(J1)) <= 3_600_000
    assert 3_500_000 < await r.pttl(n.job_request_key(J1)) <= 3_600_000
    assert 3_500_000 < await r.pttl(n.idempotency_key("key-1")) <= 3_600_000
    assert await r.get(n.result_key(J2)) == b"answer" and 0 < await r.pttl(n.result_key(J2)) <= 600_000
    assert await r.get(n.emitted_key(J2)) == b"1"
    assert await r.pttl(n.record_key("tiny", "1")) == -1  # no TTL stays no TTL
    # The shared job keys went to each job's shard; only the undelivered webhooks were carried over.
    assert await r.zscore(n.job_outbox_key(n.job_shard(J1)), J1) == 1000
    assert await r.zscore(n.job_outbox_key(n.job_shard(J2)), J2) == 2000
    assert await r.zscore(n.job_deadlines_key(n.job_shard(J1)), J1) == 5000
    callbacks = [f[b"j"] for s in n.job_shards for _, f in await r.xrange(n.callbacks_stream(s))]
    assert sorted(callbacks) == [b"new", b"pending"]
    # The conflict keeps the new value and leaves the old key; the left and unknown keys are untouched.
    assert report.conflicts == [(f"{ns}:model:tiny:previous_default", n.previous_default_key("tiny"))]
    assert await r.get(n.previous_default_key("tiny")) == b"9"
    assert await r.get(f"{ns}:model:tiny:previous_default") == b"0"
    assert report.left == {"heartbeats": 2, "leases": 1} and report.left_without_ttl == 2
    assert report.unknown == [f"{ns}:not-ours"]
    assert report.merged == {"registry": 1}
    assert report.split == {Split.OUTBOX.value: 2, Split.DEADLINES.value: 1, Split.CALLBACKS.value: 2}
    assert sum(report.moved.values()) == 18
    remaining = {bytes(k).decode() async for k in r.scan_iter(match=f"{ns}:*") if classify(n, bytes(k).decode())}
    assert remaining == {
        f"{ns}:model:tiny:previous_default",
        f"{ns}:worker:w1",
        f"{ns}:workers",
        f"{ns}:lease:{ns}.requests.tiny:0",
        f"{ns}:not-ours",
    }

    before = await snapshot(r, ns)
    again = await KeyMigrator(r, n).run()
    assert again.changes == 0 and again.conflicts == report.conflicts
    assert await snapshot(r, ns) == before


async def test_a_dry_run_changes_nothing_and_delete_stale_removes_the_left_keys(
    redis_client: Any, names: Names, fleet_settings: FleetSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await write_old_layout(redis_client, names.namespace)
    assert await old_layout_only(redis_client, names) is True
    before = await snapshot(redis_client, names.namespace)
    cli = ["admin", "migrate-keys", *connection_args(fleet_settings, tmp_path / "home", no_gateway=True)]
    code, plan, _ = await run_fleet(capsys, *cli, "--dry-run")
    assert code == 0, plan
    assert "to move  registry: 8 keys" in plan and "left  heartbeats: 2 keys" in plan
    assert await snapshot(redis_client, names.namespace) == before

    code, out, _ = await run_fleet(capsys, *cli, "--delete-stale")
    assert code == 0 and "(deleted 3)" in out.splitlines()[-1], out
    left = {bytes(k).decode() async for k in redis_client.scan_iter(match=f"{names.namespace}:*")}
    assert {k for k in left if classify(names, k) is not None} == {f"{names.namespace}:not-ours"}
    assert await old_layout_only(redis_client, names) is False


def test_report_of_an_empty_namespace_says_so() -> None:
    assert MigrationReport("ns", dry_run=True).lines() == [
        "nothing to migrate: no keys of the previous layout in namespace 'ns'"
    ]


async def test_the_start_warning_is_best_effort_when_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    client = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=0.2).client()
    try:
        assert await warn_if_old_layout(client, N, logging.getLogger("test")) is False
    finally:
        await client.aclose()
    # Only what the warning's logger wrote: clients left by other tests of the session (aiokafka) may log meanwhile.
    assert not [r for r in caplog.records if r.name == "test"]
