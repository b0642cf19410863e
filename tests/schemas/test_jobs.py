"""Async job status derivation, and reply addresses with a topic target or a result TTL."""

from __future__ import annotations

import pytest

from schemas import (
    ErrorCode,
    ErrorInfo,
    InferenceRequest,
    InferenceResponse,
    JobState,
    JobStatus,
    ReplyAddress,
    ReplyKind,
    SchemaError,
    check_topic_name,
)
from schemas.jobs import F_CREATED, F_DEADLINE, F_MODEL, F_STARTED, F_VERSION


def _state(
    *, started: float | None = None, deadline: float | None = 1000.0, error: ErrorCode | None = None, done: bool = False
) -> JobState:
    fields = {F_MODEL: b"m", F_VERSION: b"1", F_CREATED: b"0"}
    if deadline is not None:
        fields[F_DEADLINE] = repr(deadline).encode()
    if started is not None:
        fields[F_STARTED] = repr(started).encode()
    result = None
    if error is not None:
        result = InferenceResponse("j", "m", "1", error=ErrorInfo(error, "why")).to_bytes()
    elif done:
        result = InferenceResponse("j", "m", "1").to_bytes()
    return JobState.from_redis("j", {k.encode(): v for k, v in fields.items()}, result)


@pytest.mark.parametrize(
    ("state", "now", "status"),
    [
        (_state(), 10.0, JobStatus.PENDING),
        (_state(deadline=None), 1e15, JobStatus.PENDING),
        (_state(), 1000.0, JobStatus.EXPIRED),  # deadline passed, nobody took it
        (_state(started=5.0), 2000.0, JobStatus.RUNNING),  # taken before the deadline: it runs to the end
        (_state(started=5.0, done=True), 10.0, JobStatus.DONE),
        (_state(error=ErrorCode.MODEL_ERROR), 10.0, JobStatus.FAILED),
        (_state(error=ErrorCode.INVALID_INPUT, started=5.0), 10.0, JobStatus.FAILED),
        (_state(error=ErrorCode.CANCELLED), 10.0, JobStatus.CANCELLED),
        (_state(error=ErrorCode.DEADLINE_EXCEEDED), 10.0, JobStatus.EXPIRED),
    ],
)
def test_status_is_derived_from_the_hash_and_the_result(state: JobState, now: float, status: JobStatus) -> None:
    assert state.status(now) is status


def test_errors_of_expired_and_failed_jobs() -> None:
    derived = _state().error(2000.0)
    assert derived is not None and derived.code is ErrorCode.DEADLINE_EXCEEDED
    assert _state().error(10.0) is None
    assert _state(done=True).error(10.0) is None
    stored = _state(error=ErrorCode.MODEL_ERROR).error(10.0)
    assert stored == ErrorInfo(ErrorCode.MODEL_ERROR, "why")


def test_a_result_that_does_not_decode_is_a_schema_error() -> None:
    with pytest.raises(SchemaError):
        JobState.from_redis("j", {b"model": b"m"}, b"\xc1 not msgpack")


@pytest.mark.parametrize(
    "address",
    [
        ReplyAddress(ReplyKind.TOPIC, "fleet.out-1_x"),
        ReplyAddress(ReplyKind.RESULT, "", ttl_s=86_400),
        ReplyAddress(ReplyKind.STREAM, "ns:replies:g"),
    ],
)
def test_reply_addresses_round_trip(address: ReplyAddress) -> None:
    request = InferenceRequest("r", "m", "1", (), reply=address)
    assert InferenceRequest.from_bytes(request.to_bytes()).reply == address


def test_old_two_element_addresses_still_decode() -> None:
    assert ReplyAddress.from_wire(["result", ""]) == ReplyAddress(ReplyKind.RESULT, "", 0)
    assert ReplyAddress(ReplyKind.RESULT, "").to_wire() == ["result", ""]


@pytest.mark.parametrize(
    "raw",
    [
        ["topic", "bad topic"],
        ["topic", ""],
        ["topic", "x" * 250],
        ["result", "", -1],
        ["result", "", True],
        ["result", "", "5"],
    ],
)
def test_bad_reply_addresses_are_schema_errors(raw: list[object]) -> None:
    with pytest.raises(SchemaError):
        ReplyAddress.from_wire(raw)


@pytest.mark.parametrize(
    ("topic", "ok"), [("a", True), ("a.b-c_d", True), (".", False), ("..", False), ("a/b", False), ("", False)]
)
def test_topic_names(topic: str, ok: bool) -> None:
    if ok:
        assert check_topic_name(topic) == topic
    else:
        with pytest.raises(SchemaError) as info:
            check_topic_name(topic)
        assert info.value.code is ErrorCode.INVALID_REQUEST
