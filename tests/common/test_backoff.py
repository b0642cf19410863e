"""common.backoff: the one schedule and state object behind every retry loop and supervisor."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from common import Backoff, BackoffPolicy, pause


@pytest.mark.parametrize(
    ("policy", "attempts", "delays"),
    [
        (BackoffPolicy(0.05, 2.0), [1, 2, 3, 6, 7, 100], [0.05, 0.1, 0.2, 1.6, 2.0, 2.0]),
        (BackoffPolicy(1.0, 60.0), [1, 2, 6, 7, 8], [1.0, 2.0, 32.0, 60.0, 60.0]),  # autoscaler respawns
        (BackoffPolicy(200.0, 10_000.0), [1, 2, 3, 7], [200.0, 400.0, 800.0, 10_000.0]),  # milliseconds work too
        (BackoffPolicy(0.5, 30.0, factor=3.0), [1, 2, 3, 4, 5], [0.5, 1.5, 4.5, 13.5, 30.0]),
        (BackoffPolicy(0.0, 0.0), [1, 5], [0.0, 0.0]),
        (BackoffPolicy(0.05, 2.0), [10_000], [2.0]),  # a float overflow is simply the cap
        (BackoffPolicy(5.0, 1.0), [1, 2], [1.0, 1.0]),  # the cap wins over a larger first pause
    ],
)
def test_policy_delay(policy: BackoffPolicy, attempts: list[int], delays: list[float]) -> None:
    assert [policy.delay(a) for a in attempts] == pytest.approx(delays)


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 4.0), (0.5, 3.0), (0.999, 2.002)])
def test_jitter_takes_up_to_its_fraction_off(draw: float, expected: float) -> None:
    policy = BackoffPolicy(1.0, 4.0, jitter=0.5)
    assert policy.delay(3, lambda: draw) == pytest.approx(expected)
    assert policy.delay(9, lambda: draw) <= policy.max_s  # the cap holds


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_s": -1.0, "max_s": 1.0},
        {"first_s": 1.0, "max_s": -1.0},
        {"first_s": 1.0, "max_s": 2.0, "factor": 0.5},
        {"first_s": 1.0, "max_s": 2.0, "jitter": 1.5},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(1.0, 2.0).delay(0)


def test_state_counts_failures_and_resets() -> None:
    backoff = Backoff(BackoffPolicy(0.05, 0.2))
    assert backoff.failures == 0
    assert [backoff.next() for _ in range(4)] == pytest.approx([0.05, 0.1, 0.2, 0.2])
    assert backoff.failures == 4
    backoff.reset()
    assert backoff.failures == 0 and backoff.next() == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("ran", "delays"),
    [
        ([0.1, 0.1, 0.1], [0.5, 1.0, 2.0]),
        ([0.1, 0.1, 30.0, 0.1], [0.5, 1.0, 0.5, 1.0]),  # ran stable_s or longer: the count starts over
        ([None, None, 60.0], [0.5, 1.0, 0.5]),
    ],
)
def test_a_stable_run_starts_the_count_over(ran: list[float | None], delays: list[float]) -> None:
    backoff = Backoff(BackoffPolicy(0.5, 30.0, stable_s=30.0))
    assert [backoff.next(r) for r in ran] == pytest.approx(delays)


def test_without_stable_s_a_long_run_keeps_counting() -> None:
    backoff = Backoff(BackoffPolicy(0.5, 30.0))
    assert [backoff.next(1e9) for _ in range(3)] == pytest.approx([0.5, 1.0, 2.0])


def test_iterating_yields_the_pauses() -> None:
    backoff = Backoff(BackoffPolicy(1.0, 4.0, jitter=0.5), rand=lambda: 1.0)
    pauses = list(itertools.islice(backoff, 4))
    assert pauses == pytest.approx([0.5, 1.0, 2.0, 2.0])
    assert backoff.failures == 4


async def test_sleep_ends_early_when_stop_is_set() -> None:
    stop = asyncio.Event()
    backoff = Backoff(BackoffPolicy(3600.0, 3600.0))
    sleeping = asyncio.create_task(backoff.sleep(stop))
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(sleeping, 5) is True
    assert backoff.failures == 1
    assert await pause(3600.0, stop) is True  # already set: no wait at all


async def test_sleep_without_stop_waits_the_pause() -> None:
    backoff = Backoff(BackoffPolicy(0.0, 0.0))
    assert await backoff.sleep() is False
    assert await pause(0.0, asyncio.Event()) is False
