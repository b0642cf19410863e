"""What the pool worker keeps per owned partition and per assigned model (`workers.pool`): plain state, no I/O."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from schemas import Lane

from .handler import Fetched
from .models import ModelCache
from .pacing import BulkPacer
from .round import RoundPipeline, RoundRunner
from .serial import SerialExecutor
from .stats import ModelStats

LANES = (Lane.INTERACTIVE, Lane.BULK)


@dataclass(frozen=True, slots=True)
class OwnedPartition:
    """What an owned partition carries."""

    model: str
    lane: Lane
    group: str


@dataclass
class QueuedRecord:
    """A fetched record waiting in its model's queue."""

    arrived: float  # monotonic s
    item: Fetched


@dataclass
class PoolModel:
    """One assigned model: its queues, cache and round runner (no thread and no Kafka client of its own).

    ``round`` is the round being collected (its batching window open); once collected it goes to ``pipeline``,
    which runs it on the model, delivers and commits it while the next rounds are collected.
    """

    name: str
    executor: SerialExecutor
    cache: ModelCache
    stats: ModelStats
    rounds: RoundRunner
    pacer: BulkPacer
    queues: dict[Lane, deque[QueuedRecord]] = field(default_factory=lambda: {lane: deque() for lane in LANES})
    more: asyncio.Event = field(default_factory=asyncio.Event)
    round: asyncio.Task[None] | None = None
    round_lane: Lane | None = None
    pipeline: RoundPipeline | None = None
    _queued: tuple[deque[QueuedRecord], ...] = field(init=False, repr=False)  # the queues' deques, both lanes
    #: The ``(topic, partition)`` of every record taken while ``_taken_for`` was the round in hand.
    _taken: set[tuple[str, int]] = field(default_factory=set)
    _taken_for: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._queued = tuple(self.queues.values())

    def settled(self) -> bool:
        """Nothing queued, no round being collected and none in the pipeline: a pick may pass the model over."""
        return self.round is None and not any(self._queued) and (self.pipeline is None or not self.pipeline.in_flight)

    def head(self, lane: Lane) -> float | None:
        """Arrival of the oldest queued record of ``lane`` (None when empty)."""
        queue = self.queues[lane]
        return queue[0].arrived if queue else None

    def take(self, lane: Lane, limit: int) -> list[Fetched]:
        """Up to ``limit`` queued records of ``lane``, oldest first."""
        queue = self.queues[lane]
        items = [queue.popleft().item for _ in range(min(limit, len(queue)))]
        if self._taken_for is not self.round:
            self._taken_for, self._taken = self.round, set()
        self._taken.update((f.record.topic, f.record.partition) for f in items)
        return items

    def round_holds(self, partitions: set[tuple[str, int]]) -> bool:
        """Whether the round being collected (not done) took records of any of ``partitions``
        (``(topic, partition)``); the rounds already collected are ``pipeline.holding(partitions)``."""
        if self.round is None or self.round.done() or self._taken_for is not self.round:
            return False
        return not self._taken.isdisjoint(partitions)
