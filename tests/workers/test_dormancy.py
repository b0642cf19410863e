"""Dormant partitions (pure logic, a stand-in consumer that records pauses): quiet partitions are paused, swept
once per period, kept awake when records wait, and a partition the pool paused itself is never resumed by a sweep."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka import TopicPartition

from workers.dormancy import Dormancy

A, B, C = (TopicPartition("t", p) for p in range(3))


class _Consumer:
    """What Dormancy calls on an AIOKafkaConsumer: pause/resume, and per partition its last poll and log end."""

    def __init__(self) -> None:
        self.paused: set[TopicPartition] = set()
        self.polled_ms: dict[TopicPartition, int] = {}
        self.ends: dict[TopicPartition, int] = {}

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.polled_ms.get(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends.get(tp)

    def fetch(self, *tps: TopicPartition) -> None:
        """A fetch answered for ``tps`` now."""
        now = int(time.time() * 1000) + 1
        for tp in tps:
            self.polled_ms[tp] = now


class _Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr("workers.dormancy.time.monotonic", lambda: self.now)


def _dormancy(consumer: Any, full: set[TopicPartition] | None = None) -> Dormancy:
    held = full if full is not None else set()
    dormancy = Dormancy(consumer, after_s=5.0, sweep_s=0.5, paused_elsewhere=held.__contains__)
    dormancy.assigned([A, B, C])
    return dormancy


def test_quiet_partitions_are_paused_and_busy_ones_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, consumer = _Clock(monkeypatch), _Consumer()
    dormancy = _dormancy(consumer)
    clock.now += 3
    dormancy.seen([A])
    clock.now += 3  # B and C quiet for 6 s, A for 3 s
    dormancy.step({})
    assert consumer.paused == {B, C} and dormancy.dormant == {B, C}


def test_a_sweep_wakes_a_partition_with_records_and_puts_the_others_back_to_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, consumer = _Clock(monkeypatch), _Consumer()
    dormancy = _dormancy(consumer)
    clock.now += 6
    dormancy.step({})
    assert consumer.paused == {A, B, C}
    clock.now += 0.4
    dormancy.step({})
    assert consumer.paused == {A, B, C}  # not a sweep yet
    clock.now += 0.2
    dormancy.step({A: 7, B: 3, C: 0})
    assert consumer.paused == set()  # swept: all resumed for one fetch
    consumer.fetch(A, B)
    dormancy.step({A: 7, B: 3, C: 0})
    assert consumer.paused == set()  # C not answered yet: the sweep goes on
    consumer.ends.update({A: 7, B: 5, C: 0})  # B has two records waiting
    consumer.fetch(C)
    dormancy.step({A: 7, B: 3, C: 0})
    assert consumer.paused == {A, C} and dormancy.dormant == {A, C}
    clock.now += 6  # B brought nothing since: asleep again at the next tick
    dormancy.step({A: 7, B: 5, C: 0})
    assert B in consumer.paused and B in dormancy.dormant


def test_records_during_a_sweep_wake_the_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, consumer = _Clock(monkeypatch), _Consumer()
    dormancy = _dormancy(consumer)
    clock.now += 6
    dormancy.step({})
    clock.now += 0.6
    dormancy.step({})  # sweep starts
    dormancy.seen([B])  # the sweep's fetch brought records of B
    consumer.ends.update({A: 0, C: 0})
    consumer.fetch(A, C)
    dormancy.step({A: 0, C: 0})
    assert consumer.paused == {A, C} and B not in dormancy.dormant


def test_a_sweep_leaves_a_partition_the_pool_paused_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, consumer = _Clock(monkeypatch), _Consumer()
    full: set[TopicPartition] = set()
    dormancy = _dormancy(consumer, full)
    clock.now += 6
    dormancy.step({})
    full.add(A)  # its model's queue filled meanwhile (the pool paused it too)
    clock.now += 0.6
    dormancy.step({})
    assert consumer.paused == {A}
    assert not dormancy.may_resume(A)  # the pool's own resume waits for a sweep that finds records


def test_an_unanswered_sweep_ends_after_its_timeout_and_assign_pauses_the_dormant_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, consumer = _Clock(monkeypatch), _Consumer()
    dormancy = _dormancy(consumer)
    clock.now += 6
    dormancy.step({})
    clock.now += 0.6
    dormancy.step({A: 0, B: 0, C: 0})
    clock.now += 3  # no fetch answered (broker away): the sweep ends, nothing known to wait
    dormancy.step({A: 0, B: 0, C: 0})
    assert dormancy.dormant == {A, B, C}
    consumer.paused.clear()  # assign() forgets pauses
    dormancy.assigned([A, B])  # C went to another worker
    assert consumer.paused == {A, B} and dormancy.dormant == {A, B}


def test_off_pauses_nothing() -> None:
    consumer = _Consumer()
    dormancy = Dormancy(consumer, after_s=0.0, sweep_s=0.5, paused_elsewhere=lambda tp: False)
    dormancy.assigned([A])
    dormancy.step({})
    assert not dormancy.enabled and consumer.paused == set()


def test_a_wake_note_resumes_a_dormant_partition_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, consumer = _Clock(monkeypatch), _Consumer()
    full: set[TopicPartition] = set()
    dormancy = _dormancy(consumer, full)
    clock.now += 6
    dormancy.step({})
    full.add(C)
    dormancy.wake(A)
    dormancy.wake(C)  # its model's queue is full: awake, but the pool resumes it once the queue drains
    assert consumer.paused == {B, C} and dormancy.dormant == {B}
    assert dormancy.may_resume(C)
    clock.now += 3
    dormancy.step({})  # A was woken 3 s ago: not quiet yet
    assert A not in consumer.paused


def test_quiet_partitions_fall_asleep_after_after_s_however_long_the_sweep_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, consumer = _Clock(monkeypatch), _Consumer()
    dormancy = Dormancy(consumer, after_s=0.3, sweep_s=60.0, paused_elsewhere=lambda tp: False)
    clock.now += 0.2
    dormancy.assigned([A])  # assigned a moment after the start
    clock.now += 0.2
    dormancy.step({})  # the first check: A has been quiet for 0.2 s only
    assert consumer.paused == set()
    clock.now += 0.3
    dormancy.step({})  # the next check comes after 0.3 s, not after the minute of a sweep period
    assert consumer.paused == {A}
