"""Pure parts of the async-job routes: the async flag, idempotency keys, request fingerprints."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequestError
from gateway.job_routes import check_idempotency_key, fingerprint, wants_async


@pytest.mark.parametrize(
    ("query", "prefer", "expected"),
    [
        (None, None, False),
        ("true", None, True),
        ("1", None, True),
        ("False", None, False),
        ("no", "respond-async", True),  # either way of asking is enough
        (None, "respond-async", True),
        (None, "wait=10, respond-async", True),
        (None, "Respond-Async; foo=bar", True),
        (None, "return=minimal", False),
        (None, "respond-asyncx", False),
    ],
)
def test_async_flag(query: str | None, prefer: str | None, expected: bool) -> None:
    assert wants_async(query, prefer) is expected


def test_bad_async_flag_is_invalid_request() -> None:
    with pytest.raises(InvalidRequestError):
        wants_async("maybe", None)


@pytest.mark.parametrize("key", ["a", "order-42", "x" * 255, "!~"])
def test_good_idempotency_keys(key: str) -> None:
    assert check_idempotency_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\t", "é"])
def test_bad_idempotency_keys(key: str) -> None:
    with pytest.raises(InvalidRequestError):
        check_idempotency_key(key)


def test_fingerprint_covers_model_version_header_and_body() -> None:
    base = fingerprint("m", None, None, b"{}")
    assert base == fingerprint("m", None, None, b"{}")
    others = [
        fingerprint("n", None, None, b"{}"),
        fingerprint("m", "1", None, b"{}"),
        fingerprint("m", None, "2", b"{}"),
        fingerprint("m", None, None, b"{ }"),
    ]
    assert base not in others and len(set(others)) == 4
