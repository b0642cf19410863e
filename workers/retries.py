"""Retries of transient model failures: which failures retry, the backoff schedule, and the decision.

A batch that fails with a *retriable* error (the model raised a runtime error, not an input error)
does not answer its requests yet: each request is re-published to its lane's shared retry topic
(``Names.retry_topic(lane)``) with ``attempt + 1`` and ``not_before_ms = now + backoff``, and headers
(`retry_headers`) that let the gateways' retry relay route it, once due, to the model's request topic
without decoding it; they carry on the trace context (``traceparent``, ``tracestate``) of the record the
request came in, so the next try's spans join the request's trace. After ``max_attempts`` tries, or when
the next try could not start before the request's deadline, the request gets its error reply and a dead letter.
Everything here is pure (the clock and the random source are arguments), so it is tested with tables.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from common import BackoffPolicy
from schemas import ENVELOPE_VERSION, InferenceRequest
from schemas.constants import (
    HEADER_ENVELOPE_VERSION,
    HEADER_MODEL,
    HEADER_NOT_BEFORE,
    HEADER_REQUEST_ID,
    HEADER_VERSION,
)

#: Exception types that say "this input cannot work", whatever the number of tries.
_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AssertionError,
    NotImplementedError,
)
#: ONNX Runtime's pybind exception classes that mean a bad input or model, by name (the module is optional).
_PERMANENT_NAMES = frozenset({"InvalidArgument", "InvalidGraph", "NotImplemented", "InvalidProtobuf", "NoSuchFile"})


def is_retriable(exc: BaseException) -> bool:
    """True when ``exc`` raised by a model may well not happen again (runtime, memory, device, I/O errors).

    Input-shaped errors (``ValueError``, ``TypeError``, ONNX Runtime ``InvalidArgument``, ...) are permanent:
    retrying them only delays the error reply. Anything else counts as transient.
    """
    if type(exc).__name__ in _PERMANENT_NAMES:
        return False
    return not isinstance(exc, _PERMANENT_TYPES)


def backoff_ms(
    attempt: int, base_ms: float, max_ms: float, jitter: float = 0.0, rand: Callable[[], float] = random.random
) -> float:
    """Wait after try number ``attempt`` failed: ``base_ms * 2**(attempt-1)``, capped at ``max_ms``.

    ``jitter`` in [0, 1] takes up to that fraction off (so concurrent failures spread out and the cap holds).
    """
    return BackoffPolicy(base_ms, max_ms, jitter=jitter).delay(attempt, rand)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do with a request whose try failed: retry it at ``not_before_ms``, or give up and why."""

    retry: bool
    not_before_ms: float | None = None
    why_not: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` tries in all (1 = never retry), exponential backoff from ``base_ms`` capped at ``max_ms``."""

    max_attempts: int = 3
    base_ms: float = 200.0
    max_ms: float = 10_000.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base_ms < 0 or self.max_ms < self.base_ms:
            raise ValueError("need 0 <= base_ms <= max_ms")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be in [0, 1]")

    def decide(
        self, request: InferenceRequest, now_ms: float, rand: Callable[[], float] = random.random
    ) -> RetryDecision:
        """Retry ``request`` (whose try number ``request.attempt`` just failed) or give up."""
        if request.attempt >= self.max_attempts:
            tries = "try" if request.attempt == 1 else "tries"
            return RetryDecision(False, why_not=f"failed on all {request.attempt} {tries}")
        not_before = now_ms + backoff_ms(request.attempt, self.base_ms, self.max_ms, self.jitter, rand)
        if request.deadline_ms is not None and not_before >= request.deadline_ms:
            return RetryDecision(
                False, why_not=f"failed on try {request.attempt}; no retry, the deadline passes before the next try"
            )
        return RetryDecision(True, not_before_ms=not_before)


@dataclass(frozen=True, slots=True)
class Retry:
    """A request's next try (``attempt`` and ``not_before_ms`` set) and the trace headers its record carries."""

    request: InferenceRequest
    trace: tuple[tuple[str, bytes], ...] = ()


def retry_headers(
    model: str, request: InferenceRequest, trace: Iterable[tuple[str, bytes]] = ()
) -> list[tuple[str, bytes]]:
    """Headers of a retry record: the usual request headers, plus the model, version and due time (epoch ms),
    and the request's ``trace`` headers (`common.tracing.trace_headers` of its record), so its trace goes on at
    the next try."""
    return [
        (HEADER_REQUEST_ID, request.id.encode()),
        (HEADER_ENVELOPE_VERSION, str(ENVELOPE_VERSION).encode()),
        (HEADER_MODEL, model.encode()),
        (HEADER_VERSION, request.version.encode()),
        (HEADER_NOT_BEFORE, str(int(request.not_before_ms or 0)).encode()),
        *trace,
    ]
