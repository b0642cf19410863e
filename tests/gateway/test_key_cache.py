"""Pure parts of the auth middleware: the bounded LRU of key records, header parsing, bucket selection."""

from __future__ import annotations

import time

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.auth import Guard, KeyCache, UnauthenticatedError, presented_secret
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from schemas import Names
from schemas.apikeys import ApiKey


def _key(key_id: str, rate: float = 0.0) -> ApiKey:
    return ApiKey(key_id, "k", "hash", rate=rate)


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = KeyCache(ttl_s=60, size=2)
    cache.put("a", _key("a"))
    cache.put("b", None)  # an unknown id is remembered too
    assert cache.get("a") == (True, _key("a"))  # a is now the most recent
    cache.put("c", _key("c"))
    assert len(cache) == 2
    assert cache.get("b") == (False, None)
    assert cache.get("a")[0] and cache.get("c")[0]


def test_cache_entries_expire() -> None:
    cache = KeyCache(ttl_s=0.05, size=10)
    cache.put("a", _key("a"))
    assert cache.get("a")[0]
    time.sleep(0.06)
    assert cache.get("a") == (False, None)


def test_presented_secret() -> None:
    def secret(**headers: str) -> str | None:
        return presented_secret(make_mocked_request("GET", "/", headers=headers))

    assert secret() is None
    assert secret(Authorization="Bearer abc") == "abc"
    assert secret(Authorization="bearer  abc ") == "abc"
    assert secret(**{"X-API-Key": "xyz"}) == "xyz"
    assert secret(Authorization="Bearer abc", **{"X-API-Key": "xyz"}) == "abc"
    assert secret(Authorization="Basic Zm9v", **{"X-API-Key": "xyz"}) == "xyz"
    with pytest.raises(UnauthenticatedError):
        secret(Authorization="Basic Zm9v")
    with pytest.raises(UnauthenticatedError):
        secret(Authorization="Bearer ")


async def test_buckets_of_a_request() -> None:
    names = Names("ns")
    settings = GatewaySettings(model_rate_limits="m=10", rate_burst_s=2.0)
    redis = settings.fleet.redis.client()  # never used: choosing buckets needs no round trip
    guard = Guard(settings, names, redis, GatewayMetrics())
    await redis.aclose()
    assert guard.buckets(None, "other") == []
    assert guard.buckets(_key("k1"), "other") == []  # rate 0: unlimited
    key_bucket, model_bucket = guard.buckets(_key("k1", rate=0.25), "m")
    assert (key_bucket.key, key_bucket.rate, key_bucket.capacity) == (names.key_bucket_key("k1"), 0.25, 1.0)
    assert (model_bucket.key, model_bucket.rate, model_bucket.capacity) == (names.model_bucket_key("m"), 10.0, 20.0)
