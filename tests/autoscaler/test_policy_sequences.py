"""The policy counts a text-generation model whose workers run near their sequence cap, with requests waiting in
Kafka, as busy (one worker more); and the generation figures travel from a worker's report to `ServiceStats`."""

from __future__ import annotations

import pytest

from autoscaler import ScalingPolicy, ServiceStats
from autoscaler.stats import aggregate_service_stats
from schemas.stats import WorkerReport
from workers.stats import ModelStats

from .test_policy import make_load, settings

# (id, lag, sequences, max_sequences, expected desired from 2 workers, reason fragment or None)
CASES = [
    ("near the cap with requests waiting", 40, 30, 32, 3, "30/32 sequences in flight and 10 waiting -> 3"),
    ("at the cap with requests waiting", 40, 32, 32, 3, "32/32 sequences"),
    ("near the cap, nothing waiting", 30, 30, 32, 2, None),
    ("below the share of the cap", 40, 20, 32, 2, None),
    ("not a generation model", 40, 0, 0, 2, None),
    ("the formula asks for more already", 5000, 32, 32, 5, None),
]


@pytest.mark.parametrize(("lag", "sequences", "cap", "expected", "fragment"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_sequences_near_the_cap_count_as_busy(
    lag: int, sequences: int, cap: int, expected: int, fragment: str | None
) -> None:
    policy = ScalingPolicy(settings())
    stats = ServiceStats(replicas_reporting=2, per_replica_throughput=100.0, sequences=sequences, max_sequences=cap)
    decision = policy.decide("m", make_load(lag=lag), stats, current=2, now=0.0)
    assert decision.desired == expected, decision.reason
    assert decision.inputs["sequences"] == sequences
    if fragment is not None:
        assert fragment in decision.reason
    else:
        assert "sequences in flight" not in decision.reason


def test_generation_figures_go_from_the_worker_to_the_policys_stats() -> None:
    now = [100.0]
    stats = ModelStats(window_s=10.0, clock=lambda: now[0])
    stats.max_sequences, stats.sequences = 16, 12
    stats.observe_tokens(300)
    stats.observe_tokens(200)
    report = stats.report("w1", None, 1.0)
    assert (report.sequences, report.max_sequences, report.tokens_per_s) == (12, 16, 50.0)
    raw = {k.encode(): v.encode() for k, v in report.to_fields().items()}
    again = WorkerReport.from_hash("w1", raw)
    assert again == report
    other = WorkerReport("w2", 0.0, 0.0, 0, 0.0, None, 0, 1.0, sequences=4, max_sequences=16, tokens_per_s=10.0)
    total = aggregate_service_stats([again, other])
    assert (total.sequences, total.max_sequences, total.tokens_per_s) == (16, 32, 60.0)
    now[0] += 11  # the window passed: no tokens in it
    assert stats.report("w1", None, 2.0).tokens_per_s == 0.0
