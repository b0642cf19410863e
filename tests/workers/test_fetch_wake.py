"""`common.fetch_wake` without a broker: an aiokafka lacking the internals it relies on is left as it is (and
said so); the race itself is tested against the real broker in test_pool_fetch_wake."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from common.fetch_wake import guard_fetch_routine


def test_an_aiokafka_without_the_internals_is_left_unguarded(caplog: pytest.LogCaptureFixture) -> None:
    class _Fetcher:
        def _get_actions_per_node(self, assignment: Any) -> Any:
            return [], {}, 0.2, False, []

    class _Consumer:
        _fetcher = _Fetcher()

    with caplog.at_level(logging.WARNING, logger="fleet.workers"):
        assert not guard_fetch_routine(_Consumer())
    assert "not guarded" in caplog.text


class _Task:
    def __init__(self, done: bool) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


class _PlanningFetcher:
    """What the guard reads of aiokafka's Fetcher: brokers marked in flight, pending tasks, and the round's plan."""

    def __init__(self) -> None:
        self._in_flight: set[int] = set()
        self._pending_tasks: set[Any] = set()

    def _get_actions_per_node(self, assignment: Any) -> Any:
        return [], {}, 30.0, False, []


def test_a_stale_in_flight_mark_makes_one_round_wait_no_time() -> None:
    fetcher = _PlanningFetcher()
    consumer = type("C", (), {"_fetcher": fetcher})()
    assert guard_fetch_routine(consumer)
    plan = fetcher._get_actions_per_node
    fetcher._in_flight, fetcher._pending_tasks = {1}, {_Task(done=False)}
    assert plan(None)[2] == 30.0  # a fetch to broker 1 is pending: the routine waits for it
    fetcher._pending_tasks = set()
    assert plan(None)[2] == 0  # broker 1 marked, nothing pending: its done-callback has not run yet
    assert plan(None)[2] == 30.0  # still so one loop turn later: not that race, no busy loop
    fetcher._in_flight = set()
    assert plan(None)[2] == 30.0
