"""EWMA helper and the totals of a ModelLoad."""

from __future__ import annotations

import pytest

from autoscaler import ModelLoad, PartitionLoad, ewma


@pytest.mark.parametrize(
    "previous,sample,dt,half_life,expected",
    [
        (None, 7.0, 1.0, 5.0, 7.0),  # first sample taken as is
        (0.0, 10.0, 5.0, 5.0, 5.0),  # one half-life: halfway
        (0.0, 10.0, 10.0, 5.0, 7.5),  # two half-lives: three quarters
        (4.0, 10.0, 0.0, 5.0, 4.0),  # no time passed: unchanged
        (4.0, 10.0, 1.0, 0.0, 10.0),  # smoothing off
        (10.0, 0.0, 5.0, 5.0, 5.0),  # decays toward zero
    ],
)
def test_ewma(previous: float | None, sample: float, dt: float, half_life: float, expected: float) -> None:
    assert ewma(previous, sample, dt, half_life) == pytest.approx(expected)


def test_ewma_is_interval_independent() -> None:
    one_step = ewma(0.0, 10.0, 4.0, 5.0)
    two_steps = ewma(ewma(0.0, 10.0, 2.0, 5.0), 10.0, 2.0, 5.0)
    assert one_step == pytest.approx(two_steps)


def test_model_load_totals() -> None:
    load = ModelLoad(
        model="m",
        topic="t",
        group="g",
        at=1.0,
        partitions=(
            PartitionLoad(0, log_end=10, committed=4, lag=6, arrival_rate=1.5, completion_rate=1.0),
            PartitionLoad(1, log_end=5, committed=None, lag=5, arrival_rate=0.5, anomaly="x"),
        ),
    )
    assert (load.partition_count, load.lag, load.log_end, load.committed) == (2, 11, 15, 4)
    assert load.arrival_rate == pytest.approx(2.0) and load.completion_rate == pytest.approx(1.0)
    assert load.anomalies == ("p1: x",)
