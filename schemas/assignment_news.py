"""Messages on ``Names.assignments_channel``: Redis pub/sub news that the placement changed, so that the
workers that follow their assignment (and the placement scheduler) act at once instead of on their next poll.

Pub/sub is fire-and-forget (a subscriber that is not connected misses the message): every receiver still
polls, and a message only makes it act sooner. Text, readable with ``redis-cli SUBSCRIBE``::

    assigned:w1,w2   the scheduler changed these workers' assignments, or the placement status (the
                     replicas) of a model they serve or served: each reads its assignment and takes
                     partition ownership again now
    joined:w1        a worker that follows its assignment started (its heartbeat and residency are
                     written): the scheduler runs a placement round now

Any decode failure raises SchemaError.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from .errors import SchemaError


class NewsKind(StrEnum):
    """What a message on the assignments channel says."""

    ASSIGNED = "assigned"
    JOINED = "joined"


@dataclass(frozen=True, slots=True)
class AssignmentNews:
    """One message: its kind and the worker ids it names."""

    kind: NewsKind
    workers: frozenset[str]

    @classmethod
    def assigned(cls, workers: Iterable[str]) -> AssignmentNews:
        """The placement of ``workers`` changed."""
        return cls(NewsKind.ASSIGNED, frozenset(workers))

    @classmethod
    def joined(cls, worker: str) -> AssignmentNews:
        """``worker`` started following its assignment."""
        return cls(NewsKind.JOINED, frozenset((worker,)))

    def names(self, worker: str) -> bool:
        """Whether the message is about ``worker``."""
        return worker in self.workers

    def to_bytes(self) -> bytes:
        """``kind:id,id`` (ids sorted)."""
        return f"{self.kind.value}:{','.join(sorted(self.workers))}".encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> AssignmentNews:
        """Decode a message; raises SchemaError."""
        try:
            message = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            raise SchemaError("assignment news is not UTF-8") from None
        kind, sep, ids = message.partition(":")
        if not sep or kind not in NewsKind.__members__.values():
            raise SchemaError(f"assignment news {message[:80]!r}: expected 'assigned:' or 'joined:' and worker ids")
        return cls(NewsKind(kind), frozenset(w for w in ids.split(",") if w))
