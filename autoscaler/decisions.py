"""The last decision per model in Redis, for ``fleet status``: ``names.decision_key(model)`` (a HASH with TTL).

Fields (all text)::

    desired               workers the policy wants
    actual                workers the backend reported when deciding
    direction             up | down | none
    reason                the policy's reason (why)
    inputs                JSON object of every input of the decision (lag, rates, throughput, ...)
    capped_by_partitions  1 when the topic's partition count limited desired, else 0
    pinned                1 when an operator pin decided, else 0
    ts_ms                 epoch ms of the decision

The autoscaler overwrites the hash every round (one pipelined round trip for all models); the TTL makes the
record of a stopped autoscaler disappear.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from schemas import Names

from .errors import StatsError
from .policy import Decision

log = logging.getLogger("fleet.autoscaler")

#: Default lifetime of a decision hash.
DEFAULT_DECISION_TTL_S = 60


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
    """Writes each round's decisions and reads them back (``fleet status``)."""

    def __init__(self, redis: Any, names: Names, *, ttl_s: int = DEFAULT_DECISION_TTL_S) -> None:
        self._redis = redis
        self._names = names
        self.ttl_s = ttl_s

    async def publish(self, decisions: Sequence[Decision], *, at_ms: float | None = None) -> None:
        """Store the decisions of one round in one pipelined round trip; raises StatsError."""
        if not decisions:
            return
        ts = time.time() * 1000.0 if at_ms is None else at_ms
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for decision in decisions:
                    key = self._names.decision_key(decision.model)
                    pipe.delete(key)
                    pipe.hset(key, mapping=DecisionRecord.from_decision(decision, ts).to_fields())
                    pipe.expire(key, self.ttl_s)
                await pipe.execute()
        except RedisError as exc:
            raise StatsError(f"storing decisions failed: {exc}") from exc

    async def read(self, models: Sequence[str]) -> dict[str, DecisionRecord]:
        """The stored decision of each of ``models`` that has one; raises StatsError."""
        if not models:
            return {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for model in models:
                    pipe.hgetall(self._names.decision_key(model))
                hashes = await pipe.execute()
        except RedisError as exc:
            raise StatsError(f"reading decisions failed: {exc}") from exc
        records = (DecisionRecord.from_fields(m, h) for m, h in zip(models, hashes, strict=True))
        return {r.model: r for r in records if r is not None}
