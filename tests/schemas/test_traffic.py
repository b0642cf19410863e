"""Traffic splits: validation, parsing and the weighted per-request pick (pure logic)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from schemas import ErrorCode, SchemaError
from schemas.traffic import TrafficSplit, bucket_of


@pytest.mark.parametrize(
    ("words", "weights"),
    [
        (["1=90", "2=10"], (("1", 90), ("2", 10))),
        (["2=10", "1=90"], (("1", 90), ("2", 10))),  # stored in version order, whatever the input order
        ([" 10 = 50 ", "9=50"], (("9", 50), ("10", 50))),  # numeric versions sort numerically
        (["1=100"], (("1", 100),)),
        (["1=100", "2=0"], (("1", 100), ("2", 0))),
        (["b=30", "a=30", "7=40"], (("7", 40), ("a", 30), ("b", 30))),
    ],
)
def test_parse(words: list[str], weights: tuple[tuple[str, int], ...]) -> None:
    assert TrafficSplit.parse(words).weights == weights


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["1=90", "2=20"], "add up to 100, these add up to 110"),
        (["1=50"], "add up to 100, these add up to 50"),
        (["1=110", "2=-10"], "whole percentage 0-100, got 110"),
        (["1=-10", "2=110"], "whole percentage 0-100, got -10"),
        (["1=90.5", "2=9.5"], "whole percentage, got '90.5'"),
        (["1=ninety", "2=10"], "whole percentage, got 'ninety'"),
        (["1:90", "2=10"], "must look like VERSION=PERCENT"),
        (["=90", "2=10"], "must look like VERSION=PERCENT"),
        (["1=50", "1=50"], "appears twice"),
        (["bad/version=100"], "invalid model version"),
        ([], "at least one version"),
    ],
)
def test_parse_rejects(words: list[str], message: str) -> None:
    with pytest.raises(SchemaError) as info:
        TrafficSplit.parse(words)
    assert message in info.value.message
    assert info.value.code is ErrorCode.INVALID_REQUEST


def test_hash_round_trip() -> None:
    split = TrafficSplit.parse(["1=90", "2=10"])
    stored = {k.encode(): v.encode() for k, v in split.to_hash().items()}
    assert TrafficSplit.from_hash(stored) == split
    assert TrafficSplit.from_hash({}) is None
    with pytest.raises(SchemaError, match="malformed stored traffic split"):
        TrafficSplit.from_hash({b"1": b"x"})
    with pytest.raises(SchemaError, match="add up to 100"):
        TrafficSplit.from_hash({b"1": b"90"})


def test_describe() -> None:
    assert TrafficSplit.of({"2": 10, "1": 90}).describe() == "1=90 2=10"


def test_bucket_is_stable_and_in_range() -> None:
    # blake2b, not Python's salted hash(): the same id lands in the same bucket in every process.
    assert bucket_of("req-1") == bucket_of("req-1")
    assert {bucket_of(f"req-{i}") for i in range(5000)} == set(range(100))


@pytest.mark.parametrize("shares", [{"1": 90, "2": 10}, {"1": 50, "2": 50}, {"1": 0, "2": 100}, {"a": 1, "b": 99}])
def test_pick_by_key_is_deterministic_and_follows_the_split(shares: dict[str, int]) -> None:
    split = TrafficSplit.of(shares)
    ids = [f"request-{i}" for i in range(20_000)]
    picks = [split.pick(i) for i in ids]
    assert picks == [split.pick(i) for i in ids]  # a retry with the same id lands on the same version
    counts = Counter(picks)
    for version, percent in shares.items():
        assert abs(counts[version] / len(ids) * 100 - percent) < 1.5, (version, counts)


def test_pick_by_bucket_boundaries() -> None:
    split = TrafficSplit.of({"1": 90, "2": 10})
    by_bucket = {bucket_of(f"k{i}"): split.pick(f"k{i}") for i in range(5000)}
    assert all(version == ("1" if bucket < 90 else "2") for bucket, version in by_bucket.items())


def test_pick_without_key_is_random_but_weighted() -> None:
    split = TrafficSplit.of({"1": 70, "2": 30})
    rng = random.Random(7)
    counts = Counter(split.pick(None, rng) for _ in range(20_000))
    assert abs(counts["2"] / 20_000 - 0.30) < 0.02
    assert Counter(split.pick() for _ in range(2000)).keys() == {"1", "2"}


def test_zero_share_is_never_picked() -> None:
    split = TrafficSplit.of({"1": 100, "2": 0})
    assert {split.pick(f"id-{i}") for i in range(2000)} == {"1"}
    assert {split.pick(None) for _ in range(2000)} == {"1"}
    assert split.versions == ("1", "2")
