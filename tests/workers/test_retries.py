"""The retry schedule and decision (pure): exponential backoff with a cap, attempts, deadlines, classification."""

from __future__ import annotations

import pytest

from common.tracing import trace_headers
from schemas import InferenceRequest, Tensor
from workers.retries import RetryPolicy, backoff_ms, is_retriable, retry_headers


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 100.0), (2, 200.0), (3, 400.0), (4, 800.0), (5, 1000.0), (6, 1000.0), (200, 1000.0)],
)
def test_backoff_doubles_then_caps(attempt: int, expected: float) -> None:
    assert backoff_ms(attempt, 100.0, 1000.0) == expected


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 400.0), (0.5, 360.0), (1.0, 320.0)])
def test_jitter_only_shortens(rand: float, expected: float) -> None:
    assert backoff_ms(3, 100.0, 1000.0, jitter=0.2, rand=lambda: rand) == pytest.approx(expected)


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_ms(0, 100.0, 1000.0)


def _request(attempt: int = 1, deadline_ms: float | None = None) -> InferenceRequest:
    return InferenceRequest(
        "r", "m", "1", (Tensor("x", "FP32", (1,), b"\0\0\0\0"),), attempt=attempt, deadline_ms=deadline_ms
    )


@pytest.mark.parametrize(
    ("attempt", "deadline_ms", "retry", "not_before_ms", "why"),
    [
        (1, None, True, 10_100.0, ""),
        (2, None, True, 10_200.0, ""),
        (3, None, False, None, "failed on all 3 tries"),
        (9, None, False, None, "failed on all 9 tries"),
        (1, 10_500.0, True, 10_100.0, ""),
        (1, 10_100.0, False, None, "deadline passes before the next try"),
        (2, 10_150.0, False, None, "deadline passes before the next try"),
    ],
)
def test_decide(attempt: int, deadline_ms: float | None, retry: bool, not_before_ms: float | None, why: str) -> None:
    policy = RetryPolicy(max_attempts=3, base_ms=100.0, max_ms=1000.0, jitter=0.0)
    decision = policy.decide(_request(attempt, deadline_ms), now_ms=10_000.0)
    assert decision.retry is retry and decision.not_before_ms == not_before_ms and why in decision.why_not


def test_one_attempt_never_retries() -> None:
    decision = RetryPolicy(max_attempts=1).decide(_request(), now_ms=0.0)
    assert not decision.retry and decision.why_not == "failed on all 1 try"


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"base_ms": -1.0}, {"base_ms": 10.0, "max_ms": 5.0}, {"jitter": 1.5}]
)
def test_policy_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


class InvalidArgument(Exception):
    """Named like ONNX Runtime's pybind exception for a bad input."""


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (RuntimeError("CUDA out of memory"), True),
        (MemoryError(), True),
        (OSError("device gone"), True),
        (ValueError("bad shape"), False),
        (TypeError("bad type"), False),
        (KeyError("x"), False),
        (InvalidArgument("bad input"), False),
    ],
)
def test_classification(exc: BaseException, retriable: bool) -> None:
    assert is_retriable(exc) is retriable


def test_attempt_and_not_before_round_trip_and_default() -> None:
    request = _request(attempt=3)
    again = InferenceRequest.from_bytes(
        InferenceRequest(**{**_fields(request), "not_before_ms": 123.0}).to_bytes()  # type: ignore[arg-type]
    )
    assert again.attempt == 3 and again.not_before_ms == 123.0
    first = InferenceRequest.from_bytes(_request().to_bytes())
    assert first.attempt == 1 and first.not_before_ms is None and first.due(0.0)
    assert not again.due(122.0) and again.due(123.0)


def _fields(request: InferenceRequest) -> dict[str, object]:
    return {name: getattr(request, name) for name in InferenceRequest.__dataclass_fields__}


def test_a_retry_record_carries_the_trace_context_of_the_requests_record() -> None:
    parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    record_headers = [("fleet-request-id", b"r"), ("traceparent", parent), ("tracestate", b"k=v"), ("other", b"x")]
    trace = trace_headers(record_headers)
    assert trace == (("traceparent", parent), ("tracestate", b"k=v"))  # only the trace context
    assert trace_headers(None) == trace_headers([("traceparent", None)]) == ()  # none, or an empty one
    headers = retry_headers("m", _request(attempt=2), trace)
    assert headers[-2:] == list(trace) and [k for k, _ in headers].count("traceparent") == 1
    assert "traceparent" not in dict(retry_headers("m", _request(attempt=2)))  # an untraced request: none
