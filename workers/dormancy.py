"""Dormant partitions: a pool lane's quiet partitions left out of its fetches and swept now and then.

A fetch names every partition its consumer fetches, and some brokers pay for each one named on every fetch
whether or not it holds records: the embedded broker (Tansu) spent ~17 ms of CPU on a fetch naming 1,000
idle partitions against ~1 ms for 20, so a pool worker serving 500 models kept the broker busy and the hot
models' fetches slow. With dormancy on, a partition that brought no records for ``after_s`` is paused
(aiokafka keeps its position); every ``sweep_s`` the dormant ones are resumed for one fetch, and those whose
high watermark is past the worker's position (records waiting) stay resumed, the rest are paused again. A
dormant model's first request therefore waits up to one sweep longer; the busy ones' fetches name only the
busy partitions. Kafka itself parks a waiting fetch on the broker at no cost per partition, so there it is
off (``FLEET_WORKER_POOL_DORMANT_AFTER_S=0``, the default); the local stack turns it on for its broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import TopicPartition

from common.fetch_wake import SLEEPING_ROUTINE_WAKE_MS


def consumer_options(after_s: float) -> dict[str, Any]:
    """Extra ``AIOKafkaConsumer`` options for a consumer whose quiet partitions sleep after ``after_s`` (0: off)."""
    return {"consumer_timeout_ms": SLEEPING_ROUTINE_WAKE_MS} if after_s > 0 else {}


class Dormancy:
    """Which of one consumer's assigned partitions sleep (paused between sweeps), and the sweeps that wake them.

    ``paused_elsewhere(tp)``: the pool paused ``tp`` for its own reason (its model's queue is full); a sweep
    leaves such a partition paused.
    """

    def __init__(
        self,
        consumer: Any,
        after_s: float,
        sweep_s: float,
        paused_elsewhere: Callable[[TopicPartition], bool],
        *,
        sweep_timeout_s: float = 2.0,
    ) -> None:
        self._consumer = consumer
        self._after_s = after_s
        self._sweep_s = sweep_s
        self._sweep_timeout_s = sweep_timeout_s
        self._paused_elsewhere = paused_elsewhere
        self._last_seen: dict[TopicPartition, float] = {}  # monotonic time of its last records (or assignment)
        #: Partitions paused for being quiet (those being swept included).
        self.dormant: set[TopicPartition] = set()
        self._sweeping: set[TopicPartition] = set()  # dormant, resumed for the sweep under way
        self._sweep_started_ms = 0  # wall clock, as aiokafka stamps a partition's last poll
        self._sweep_started = 0.0
        self._next_sweep = time.monotonic() + sweep_s
        self._next_quiet_check = time.monotonic() + min(sweep_s, after_s)  # none can be quiet before after_s

    @property
    def enabled(self) -> bool:
        """Whether quiet partitions sleep at all."""
        return self._after_s > 0

    def assigned(self, tps: Iterable[TopicPartition]) -> None:
        """The consumer was given ``tps`` (``assign()`` forgets pauses): new ones start awake, dormant ones
        not being swept are paused again."""
        if not self.enabled:
            return
        current = frozenset(tps)
        now = time.monotonic()
        self._last_seen = {tp: self._last_seen.get(tp, now) for tp in current}
        self.dormant &= current
        self._sweeping &= current
        asleep = [tp for tp in self.dormant if tp not in self._sweeping]
        if asleep:
            self._consumer.pause(*asleep)

    def seen(self, tps: Iterable[TopicPartition]) -> None:
        """Records arrived from ``tps``: they are awake (a dormant one found by a sweep stays resumed)."""
        if not self.enabled:
            return
        now = time.monotonic()
        for tp in tps:
            if tp in self._last_seen:
                self._last_seen[tp] = now
                self.dormant.discard(tp)
                self._sweeping.discard(tp)

    def poll_timeout_ms(self, default_ms: int) -> int:
        """How long the caller's next ``getmany`` may wait: briefly while a sweep is under way, so that it ends
        (and the swept partitions sleep again) right after its fetch came back, not after more fetches."""
        return min(default_ms, 5) if self._sweeping else default_ms

    def wake(self, tp: TopicPartition) -> None:
        """Records are known to wait on ``tp`` (a gateway's wake note): fetch it from now on, not at a sweep."""
        if not self.enabled or tp not in self.dormant:
            return
        self.dormant.discard(tp)
        self._last_seen[tp] = time.monotonic()
        if tp in self._sweeping:
            self._sweeping.discard(tp)  # resumed already
        elif not self._paused_elsewhere(tp):
            self._consumer.resume(tp)

    def may_resume(self, tp: TopicPartition) -> bool:
        """Whether the pool may resume ``tp`` after its own pause (not while it is dormant)."""
        return tp not in self.dormant or tp in self._sweeping

    def step(self, positions: Mapping[TopicPartition, int]) -> None:
        """Called after every fetch: end a sweep whose fetch came back, or put the partitions quiet for ``after_s``
        to sleep (checked every ``min(sweep_s, after_s)``) and, once per ``sweep_s``, sweep the dormant ones.
        ``positions``: the next offset the worker reads."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self._sweeping:
            if self._swept(now):
                self._end_sweep(now, positions)
            return
        sweep: list[TopicPartition] = []
        if now >= self._next_sweep:  # the partitions asleep until now (not those put to sleep below)
            self._next_sweep = now + self._sweep_s
            sweep = [tp for tp in self.dormant if not self._paused_elsewhere(tp)]
        if now >= self._next_quiet_check:
            self._next_quiet_check = now + min(self._sweep_s, self._after_s)
            quiet = [
                tp for tp, seen in self._last_seen.items() if tp not in self.dormant and now - seen > self._after_s
            ]
            if quiet:
                self.dormant.update(quiet)
                self._consumer.pause(*quiet)
        if sweep:
            self._sweeping = set(sweep)
            self._sweep_started = now
            self._sweep_started_ms = int(time.time() * 1000)
            self._consumer.resume(*sweep)

    def _swept(self, now: float) -> bool:
        """Whether a fetch has answered for every partition of the sweep (or the sweep took too long)."""
        if now - self._sweep_started > self._sweep_timeout_s:
            return True
        started = self._sweep_started_ms
        return all((self._consumer.last_poll_timestamp(tp) or 0) >= started for tp in self._sweeping)

    def _end_sweep(self, now: float, positions: Mapping[TopicPartition, int]) -> None:
        back: list[TopicPartition] = []
        for tp in self._sweeping:
            end, position = self._consumer.highwater(tp), positions.get(tp)
            if (self._consumer.last_poll_timestamp(tp) or 0) < self._sweep_started_ms:
                back.append(tp)  # no fetch answered for it (the sweep timed out): swept again next time
            elif end is not None and position is not None and end <= position:
                back.append(tp)  # nothing to read: asleep again
            else:  # records waiting (or the position not known): awake until it has been quiet for after_s
                self.dormant.discard(tp)
                self._last_seen[tp] = now
        self._sweeping.clear()
        if back:
            self._consumer.pause(*back)
