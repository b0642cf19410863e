"""A Redis pool that stays exhausted is this gateway's overload (503 OVERLOADED with Retry-After), not an
unavailable Redis."""

from __future__ import annotations

import pytest

from gateway.errors import OverloadedError, redis_bounded
from schemas import ErrorCode
from schemas.settings import RedisPoolExhaustedError


async def _waits_for_a_connection_in_vain() -> None:
    raise RedisPoolExhaustedError(64, 0.5)


async def test_an_exhausted_pool_is_overload_not_an_unavailable_redis() -> None:
    with pytest.raises(OverloadedError) as caught:
        await redis_bounded(_waits_for_a_connection_in_vain(), 1.0, "job store")
    error = caught.value
    assert error.code is ErrorCode.OVERLOADED and error.retriable and "Retry-After" in error.headers
    assert "job store: Redis connection pool exhausted: all 64 connections" in error.message
    assert "unavailable" not in error.message
