"""The last decision per model in Redis, for ``fleet status``: ``names.decision_key(model)`` (a HASH).

Fields (all text)::

    desired               workers the policy wants
    actual                workers the backend reported when deciding
    direction             up | down | none
    reason                the policy's reason (why)
    inputs                JSON object of every input of the decision (lag, rates, throughput, ...)
    capped_by_partitions  1 when the topic's partition count limited desired, else 0
    pinned                1 when an operator pin decided, else 0
    ts_ms                 epoch ms of the decision

A round writes only the decisions that changed (one pipelined round trip), so an idle fleet costs the same
whatever its model count; what counts as a change ignores how long an idle model has been idle (``idle_for_s``
and the "idle for N s" of the reason), which `DecisionStore.read` brings up to date, and the figures' noise: a
measured input counts to two significant digits, one under ``NEGLIGIBLE`` as zero, and the figures in the
reason not at all (its wording does). So a model's smoothed rates decaying after its traffic ended (they near
zero for an hour, never reaching it) change its stored decision for about a minute, not every round. Every
round also stamps ``names.decision_round_key`` (epoch ms, EXPIRE ``ttl_s``): the stored decisions are those of
that round, and once a stopped autoscaler's stamp expires `DecisionStore.read` returns none.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from redis.exceptions import RedisError

from schemas import Names

from .errors import StatsError
from .policy import Decision

log = logging.getLogger("fleet.autoscaler")

#: Default lifetime of the round stamp (the stored decisions count as current while it exists).
DEFAULT_DECISION_TTL_S = 60

#: The idle time in a reason (`autoscaler.policy`), which grows every round while nothing else changes.
_IDLE_FOR = re.compile(r"idle for (\d+(?:\.\d+)?)s")
#: A number in a reason (its figures; the decision's own numbers are compared in their fields).
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")
#: A measured input below this (a rate per second, a latency in ms, ...) is no different from zero.
NEGLIGIBLE = 0.01


def _figure(value: object) -> object:
    """A measured input as a change of the decision sees it: two significant digits, negligible as zero."""
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    return 0.0 if abs(value) < NEGLIGIBLE else float(f"{value:.2g}")


def _material(decision: Decision) -> tuple[object, ...]:
    """What a change of the decision is: every field but the time and the idle time (idle or not counts), the
    inputs' figures to two significant digits and the reason's wording without its figures (no JSON: this runs
    for every model every round)."""
    idle = decision.inputs.get("idle_for_s", 0)
    inputs = tuple(sorted((k, _figure(v)) for k, v in decision.inputs.items() if k != "idle_for_s"))
    return (
        decision.desired,
        decision.current,
        decision.direction,
        decision.capped_by_partitions,
        decision.pinned,
        _NUMBER.sub("#", decision.reason),
        inputs,
        isinstance(idle, int | float) and idle > 0,
    )


def _aged(record: DecisionRecord, now_ms: float) -> DecisionRecord:
    """``record`` as the round at ``now_ms`` re-made it: its idle time grown by the time since it was written."""
    idle = record.inputs.get("idle_for_s")
    if now_ms <= record.ts_ms:
        return record
    if not isinstance(idle, int | float) or idle <= 0:
        return replace(record, ts_ms=now_ms)
    grown = idle + (now_ms - record.ts_ms) / 1000.0
    reason = _IDLE_FOR.sub(f"idle for {grown:.1f}s", record.reason)
    inputs = {**record.inputs, "idle_for_s": round(grown, 3)}
    return replace(record, ts_ms=now_ms, reason=reason, inputs=inputs)


@dataclass(frozen=True)
class DecisionRecord:
    """A stored decision: what ``fleet status`` shows as desired vs actual and the reason."""

    model: str
    desired: int
    actual: int
    direction: str
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)
    capped_by_partitions: bool = False
    pinned: bool = False
    ts_ms: float = 0.0

    @classmethod
    def from_decision(cls, decision: Decision, ts_ms: float) -> DecisionRecord:
        """The record of a policy decision made at ``ts_ms`` (epoch ms)."""
        return cls(
            decision.model,
            decision.desired,
            decision.current,
            decision.direction.value,
            decision.reason,
            dict(decision.inputs),
            decision.capped_by_partitions,
            decision.pinned,
            ts_ms,
        )

    def to_fields(self) -> dict[str, str]:
        """The hash fields (see the module docstring)."""
        return {
            "desired": str(self.desired),
            "actual": str(self.actual),
            "direction": self.direction,
            "reason": self.reason,
            "inputs": json.dumps(self.inputs, separators=(",", ":"), sort_keys=True),
            "capped_by_partitions": "1" if self.capped_by_partitions else "0",
            "pinned": "1" if self.pinned else "0",
            "ts_ms": str(int(self.ts_ms)),
        }

    @classmethod
    def from_fields(cls, model: str, raw: Mapping[bytes, bytes]) -> DecisionRecord | None:
        """Parse a stored hash; None when it is empty or malformed."""
        try:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            inputs = json.loads(fields.get("inputs", "{}"))
            return cls(
                model=model,
                desired=int(fields["desired"]),
                actual=int(fields["actual"]),
                direction=fields.get("direction", ""),
                reason=fields.get("reason", ""),
                inputs=inputs if isinstance(inputs, dict) else {},
                capped_by_partitions=fields.get("capped_by_partitions") == "1",
                pinned=fields.get("pinned") == "1",
                ts_ms=float(fields["ts_ms"]),
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            return None


class DecisionStore:
    """Writes each round's changed decisions and reads them back (``fleet status``)."""

    def __init__(self, redis: Any, names: Names, *, ttl_s: int = DEFAULT_DECISION_TTL_S) -> None:
        self._redis = redis
        self._names = names
        self.ttl_s = ttl_s
        #: What this store last wrote per model (`_material`), and the decision it last saw per model (a decision
        #: the control loop kept, the same object, is not compared again).
        self._written: dict[str, tuple[object, ...]] = {}
        self._seen: dict[str, Decision] = {}

    async def publish(self, decisions: Sequence[Decision], *, at_ms: float | None = None) -> None:
        """Store the decisions of one round that changed since this store wrote them, and stamp the round,
        in one pipelined round trip; raises StatsError."""
        if not decisions:
            return
        ts = time.time() * 1000.0 if at_ms is None else at_ms
        changed: dict[str, tuple[dict[str, str], tuple[object, ...]]] = {}
        seen = self._seen
        for decision in decisions:
            if seen.get(decision.model) is decision and decision.model in self._written:
                continue
            material = _material(decision)
            if self._written.get(decision.model) != material:
                changed[decision.model] = (DecisionRecord.from_decision(decision, ts).to_fields(), material)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for model, (fields, _) in changed.items():
                    key = self._names.decision_key(model)
                    pipe.delete(key)
                    pipe.hset(key, mapping=fields)
                pipe.set(self._names.decision_round_key, str(int(ts)), ex=self.ttl_s)
                await pipe.execute()
        except RedisError as exc:
            self._written.clear()  # unknown what was stored: write everything next time
            raise StatsError(f"storing decisions failed: {exc}") from exc
        # A model missing from this round (removed, or failed this once) is written again when it comes back.
        self._seen = {d.model: d for d in decisions}
        if len(self._written) > len(self._seen) or not self._written.keys() <= self._seen.keys():
            self._written = {m: w for m, w in self._written.items() if m in self._seen}
        self._written.update((model, material) for model, (_, material) in changed.items())

    async def read(self, models: Sequence[str]) -> dict[str, DecisionRecord]:
        """The stored decision of each of ``models`` that has one, as of the autoscaler's last round (none once
        its round stamp expired: no autoscaler runs); raises StatsError."""
        if not models:
            return {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._names.decision_round_key)
                for model in models:
                    pipe.hgetall(self._names.decision_key(model))
                stamp, *hashes = await pipe.execute()
        except RedisError as exc:
            raise StatsError(f"reading decisions failed: {exc}") from exc
        if stamp is None:
            return {}
        try:
            round_ms = float(stamp)
        except ValueError:
            round_ms = 0.0
        records = (DecisionRecord.from_fields(m, h) for m, h in zip(models, hashes, strict=True))
        return {r.model: _aged(r, round_ms) for r in records if r is not None}
