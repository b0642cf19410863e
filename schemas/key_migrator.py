"""Moving a namespace's keys from the previous Redis key layout to the hash-tagged one (`schemas.key_migration`).

:class:`KeyMigrator` scans the namespace for old-layout keys and moves each where :func:`classify` says, with
its TTL: on a single server with ``RENAMENX`` (atomic, keeps the TTL), on a Redis Cluster, where the two names
are in different slots, with ``DUMP`` + ``PTTL`` + ``RESTORE`` to the new name and then ``DEL`` of the old
one. A key present under both names is a conflict: the new one is kept and the old one left in place and
reported (unless both hold the same value: a move cut short between its ``RESTORE`` and ``DEL``, which is
finished). Running it again changes nothing. Run it once the previous version's processes are stopped: one
still running would keep writing old keys (a second run moves those too).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from .jobs import CALLBACK_FIELD, CALLBACK_GROUP, CALLBACK_STREAM_MAXLEN
from .key_migration import (
    LEAVE_REASONS,
    Action,
    KeyPlan,
    Split,
    classify,
    old_marker_keys,
    old_models_key,
    old_prefix,
    split_target,
)
from .names import Names
from .redis_values import text

log = logging.getLogger(__name__)

#: Keys per pipelined round trip.
_BATCH = 500


@dataclass
class MigrationReport:
    """What a migration did (or, in a dry run, would do), counted by group of keys."""

    namespace: str
    dry_run: bool
    moved: Counter[str] = field(default_factory=Counter)  # group -> keys moved to their new name
    merged: Counter[str] = field(default_factory=Counter)  # group -> SETs whose members joined an existing new set
    split: Counter[str] = field(default_factory=Counter)  # shared job key -> entries sent to their job's shard
    left: Counter[str] = field(default_factory=Counter)  # group -> keys left where they are
    left_without_ttl: int = 0
    deleted: int = 0  # left keys deleted (delete_stale)
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (old, new): both exist and differ
    unknown: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        """Keys and entries moved, merged, split or deleted (what a second run finds to do: 0)."""
        return sum(self.moved.values()) + sum(self.merged.values()) + sum(self.split.values()) + self.deleted

    def lines(self) -> list[str]:
        """The report in words, one line per group."""
        verb = "to move" if self.dry_run else "moved"
        out: list[str] = []
        for group, count in sorted(self.moved.items()):
            out.append(f"{verb:>9}  {group}: {count} keys")
        for group, count in sorted(self.merged.items()):
            out.append(f"{'to merge' if self.dry_run else 'merged':>9}  {group}: {count} sets into existing new sets")
        for name, count in sorted(self.split.items()):
            out.append(f"{'to split' if self.dry_run else 'split':>9}  jobs {name}: {count} entries into job shards")
        for group, count in sorted(self.left.items()):
            out.append(f"{'left':>9}  {group}: {count} keys ({LEAVE_REASONS.get(group, '')})")
        if self.deleted:
            out.append(f"{'deleted' if not self.dry_run else 'to delete':>9}  {self.deleted} left keys")
        elif self.left_without_ttl:
            out.append(f"{'note':>9}  {self.left_without_ttl} left keys have no TTL: --delete-stale removes them")
        for old, new in self.conflicts:
            out.append(f"{'conflict':>9}  {old} -> {new}: both exist and differ; kept {new}, {old} left in place")
        for key in self.unknown:
            out.append(f"{'unknown':>9}  {key}: not a key of the previous layout, untouched")
        if not out:
            out.append(f"nothing to migrate: no keys of the previous layout in namespace {self.namespace!r}")
        return out

    def summary(self) -> str:
        """One line: the totals."""
        verb = "would move" if self.dry_run else "moved"
        parts = [
            f"{verb} {sum(self.moved.values())} keys",
            f"merged {sum(self.merged.values())} sets",
            f"split {sum(self.split.values())} job entries into shards",
            f"left {sum(self.left.values())}" + (f" (deleted {self.deleted})" if self.deleted else ""),
            f"{len(self.conflicts)} conflicts",
        ]
        if self.unknown:
            parts.append(f"{len(self.unknown)} unknown keys untouched")
        return f"namespace {self.namespace}: " + ", ".join(parts)


async def old_layout_only(redis: Any, names: Names) -> bool:
    """Whether Redis holds the previous layout's registry of the namespace and not the current one (two EXISTS:
    the keys are in different slots on a cluster)."""
    if not await redis.exists(old_models_key(names)):
        return False
    return not await redis.exists(names.models_key)


async def old_layout_present(redis: Any, names: Names) -> bool:
    """Whether Redis holds any of the previous layout's index keys of the namespace (`old_marker_keys`)."""
    for key in old_marker_keys(names):
        if await redis.exists(key):
            return True
    return False


async def warn_if_old_layout(redis: Any, names: Names, logger: logging.Logger) -> bool:
    """Log one warning naming the migration command when Redis holds old-layout keys and no new registry;
    best effort at a service's start (a Redis error is the service's own to report later)."""
    try:
        if not await old_layout_only(redis, names):
            return False
    except (RedisError, OSError):
        return False
    logger.warning(
        "Redis holds the registry of namespace %r in the previous key layout (%s) and none in this version's: "
        "models, API keys and jobs are invisible until `fleet admin migrate-keys` moves them",
        names.namespace,
        old_models_key(names),
    )
    return True


class KeyMigrator:
    """Moves the old-layout keys of one namespace to their hash-tagged names (module docstring)."""

    def __init__(self, redis: Any, names: Names) -> None:
        self._redis = redis
        self._names = names
        self._cluster = isinstance(redis, RedisCluster)

    async def plans(self) -> list[KeyPlan]:
        """Every old-layout key of the namespace and what to do with it (one SCAN over every node)."""
        plans: list[KeyPlan] = []
        async for raw in self._redis.scan_iter(match=f"{old_prefix(self._names)}*", count=1000):
            try:
                key = bytes(raw).decode() if not isinstance(raw, str) else raw
            except UnicodeDecodeError:
                continue  # not a name the fleet ever wrote
            plan = classify(self._names, key)
            if plan is not None:
                plans.append(plan)
        return sorted(plans, key=lambda p: p.old)

    async def run(self, *, dry_run: bool = False, delete_stale: bool = False) -> MigrationReport:
        """Migrate (or with ``dry_run`` only count) the namespace's old-layout keys; ``delete_stale`` also
        deletes the keys left behind (only once no process of the previous version runs)."""
        report = MigrationReport(self._names.namespace, dry_run)
        plans = await self.plans()
        moves = [p for p in plans if p.action in (Action.MOVE, Action.MERGE)]
        for start in range(0, len(moves), _BATCH):
            await self._move(moves[start : start + _BATCH], report, dry_run)
        for plan in plans:
            if plan.action is Action.SPLIT:
                assert plan.split is not None
                report.split[plan.split.value] += await self._split(plan.old, plan.split, dry_run)
            elif plan.action is Action.UNKNOWN:
                report.unknown.append(plan.old)
        await self._leave([p for p in plans if p.action is Action.LEAVE], report, dry_run, delete_stale)
        if not dry_run:
            await self._bump_epochs(report)
        return report

    # moves -------------------------------------------------------------------
    async def _move(self, plans: Sequence[KeyPlan], report: MigrationReport, dry_run: bool) -> None:
        if dry_run:
            taken = await self._pipeline([("EXISTS", p.new) for p in plans])
            free = [p for p, exists in zip(plans, taken, strict=True) if not exists]
            busy = [p for p, exists in zip(plans, taken, strict=True) if exists]
        elif self._cluster:
            free, busy = await self._restore(plans)
        else:
            outcomes = await self._pipeline([("RENAMENX", p.old, p.new) for p in plans])
            free = [p for p, moved in zip(plans, outcomes, strict=True) if moved == 1]
            busy = [p for p, moved in zip(plans, outcomes, strict=True) if moved == 0]
            # an error: the old key vanished since the scan (expired): nothing to move
        for plan in free:
            report.moved[plan.group] += 1
        for plan in busy:
            await self._both_exist(plan, report, dry_run)

    async def _restore(self, plans: Sequence[KeyPlan]) -> tuple[list[KeyPlan], list[KeyPlan]]:
        """DUMP + PTTL the old keys, RESTORE them under their new names, DEL the restored old ones."""
        dumped = await self._pipeline([c for p in plans for c in (("DUMP", p.old), ("PTTL", p.old))])
        present = [
            (plan, payload, max(0, int(ttl)))
            for plan, payload, ttl in zip(plans, dumped[::2], dumped[1::2], strict=True)
            if payload is not None and int(ttl) != -2
        ]
        restored = await self._pipeline([("RESTORE", p.new, ttl, payload) for p, payload, ttl in present])
        free: list[KeyPlan] = []
        busy: list[KeyPlan] = []
        for (plan, _, _), outcome in zip(present, restored, strict=True):
            if isinstance(outcome, ResponseError) and "BUSYKEY" in str(outcome):
                busy.append(plan)
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                free.append(plan)
        await self._pipeline([("DEL", p.old) for p in free])
        return free, busy

    async def _both_exist(self, plan: KeyPlan, report: MigrationReport, dry_run: bool) -> None:
        """The new name exists already: a SET of names is merged into it; an identical value finishes a move cut
        short; anything else is a conflict (the new one is kept)."""
        redis = self._redis
        sets = plan.action is Action.MERGE and await redis.type(plan.old) == await redis.type(plan.new) == b"set"
        if sets:
            if not dry_run:
                members = await redis.smembers(plan.old)
                if members:
                    await redis.sadd(plan.new, *members)
                await redis.delete(plan.old)
            report.merged[plan.group] += 1
            return
        old, new = await redis.dump(plan.old), await redis.dump(plan.new)
        if old is None:
            return  # gone since the scan
        if old == new:
            if not dry_run:
                await redis.delete(plan.old)
            report.moved[plan.group] += 1
            return
        report.conflicts.append((plan.old, plan.new))

    # the shared job keys -----------------------------------------------------
    async def _split(self, key: str, split: Split, dry_run: bool) -> int:
        """Send each entry of an old shared job key to its job's shard; returns how many entries."""
        redis = self._redis
        if split is Split.CALLBACKS:
            job_ids = await self._undelivered_callbacks(key)
            if not dry_run:
                for job_id in job_ids:
                    stream = split_target(self._names, split, job_id)
                    fields = {CALLBACK_FIELD: job_id}
                    await redis.xadd(stream, fields, maxlen=CALLBACK_STREAM_MAXLEN, approximate=True)
            count = len(job_ids)
        else:
            entries = await redis.zrange(key, 0, -1, withscores=True)
            by_target: dict[str, dict[str, float]] = {}
            for member, score in entries:
                job_id = text(member)
                by_target.setdefault(split_target(self._names, split, job_id), {})[job_id] = score
            if not dry_run:
                for target, mapping in by_target.items():
                    await redis.zadd(target, mapping, nx=True)
            count = len(entries)
        if not dry_run:
            await redis.delete(key)
        return count

    async def _undelivered_callbacks(self, key: str) -> list[str]:
        """Job ids of the old callbacks stream's entries whose webhook the gateways have not delivered: past the
        ``webhooks`` group's last delivered id, or delivered and not acknowledged (all of them without a group)."""
        redis = self._redis
        last = (0, 0)
        pending: set[str] = set()
        for group in await redis.xinfo_groups(key):
            if text(group.get("name", b"")) == CALLBACK_GROUP:
                last = _stream_id(group["last-delivered-id"])
                rows = await redis.xpending_range(key, CALLBACK_GROUP, min="-", max="+", count=1_000_000)
                pending = {text(row["message_id"]) for row in rows}
        job_ids: list[str] = []
        seen: set[str] = set()
        start = "-"
        while True:
            entries = await redis.xrange(key, min=start, max="+", count=1000)
            if not entries:
                break
            for entry_id, fields in entries:
                job_id = text(fields.get(CALLBACK_FIELD.encode(), b""))
                live = _stream_id(entry_id) > last or text(entry_id) in pending
                if live and job_id and job_id not in seen:
                    seen.add(job_id)
                    job_ids.append(job_id)
            start = f"({text(entries[-1][0])}"
        return job_ids

    # the rest ----------------------------------------------------------------
    async def _leave(
        self, plans: Sequence[KeyPlan], report: MigrationReport, dry_run: bool, delete_stale: bool
    ) -> None:
        for start in range(0, len(plans), _BATCH):
            batch = plans[start : start + _BATCH]
            ttls = await self._pipeline([("PTTL", p.old) for p in batch])
            for plan, ttl in zip(batch, ttls, strict=True):
                if isinstance(ttl, Exception) or int(ttl) == -2:
                    continue  # expired since the scan
                report.left[plan.group] += 1
                report.left_without_ttl += int(ttl) == -1
            if delete_stale:
                if not dry_run:
                    deleted = await self._pipeline([("DEL", p.old) for p in batch])
                    report.deleted += sum(int(d) for d in deleted if not isinstance(d, Exception))
                else:
                    report.deleted += len(batch)

    async def _bump_epochs(self, report: MigrationReport) -> None:
        """Readers cache the registry and placements until their epoch moves: move it for what was moved in."""
        n = self._names
        if report.moved["registry"] or report.merged["registry"]:
            await self._redis.incr(n.registry_epoch_key)
        if report.moved["placement"]:
            await self._redis.incr(n.placement_epoch_key)

    async def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``commands`` in one non-transactional pipeline; per command its reply or its error."""
        if not commands:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))


def _stream_id(value: object) -> tuple[int, int]:
    ms, _, seq = text(value).partition("-")
    return int(ms), int(seq or 0)
