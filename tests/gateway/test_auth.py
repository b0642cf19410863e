"""API keys, allow-lists and rate limits on a real gateway (real broker and Redis; the test plays the worker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.client import API_KEY_ENV, FleetClient
from fleet.client.errors import FleetHTTPError
from fleet.local.servers import free_port
from gateway import Gateway, GatewaySettings
from schemas import ModelRecord, Names, RedisSettings
from schemas.apikeys import ApiKeyStore, new_secret

from .conftest import serve_one, wait_ready

INFER = "/v2/models/tiny/infer"
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def auth_settings(gateway_settings: GatewaySettings) -> GatewaySettings:
    return replace(gateway_settings, auth=True, auth_cache_ttl_s=0.3)


@pytest.fixture
async def secured(
    auth_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> AsyncIterator[Gateway]:
    async with Gateway(auth_settings, names=names) as gw:
        await wait_ready(http, gw)
        yield gw


@pytest.fixture
def store(redis_client: Any, names: Names) -> ApiKeyStore:
    return ApiKeyStore(redis_client, names)


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, dict[str, Any], Any]:
    async with http.request(method, url, headers=headers, **kw) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def test_probes_and_metrics_stay_open(secured: Gateway, http: aiohttp.ClientSession) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2"):
        status, _, _ = await _call(http, "GET", secured.url + path)
        assert status == 200, path
    async with http.get(secured.url + "/metrics") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-key"},
        {"X-API-Key": "fk_0123456789ab_" + "a" * 43},  # well-formed, unknown
    ],
)
async def test_missing_malformed_or_unknown_key_is_401(
    secured: Gateway, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    for method, path in (("POST", INFER), ("GET", "/v2/models/tiny"), ("GET", "/v2/jobs/x")):
        status, answer, resp_headers = await _call(http, method, secured.url + path, headers, json=BODY)
        assert status == 401, (path, answer)
        assert answer["code"] == "UNAUTHENTICATED" and "unauthenticated" in answer["error"]
        assert resp_headers["WWW-Authenticate"].startswith("Bearer")


async def test_wrong_hash_is_401(secured: Gateway, http: aiohttp.ClientSession, store: ApiKeyStore) -> None:
    key, secret = await store.create("ci")
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    status, answer, _ = await _call(http, "GET", secured.url + "/v2/models/tiny", bearer(forged))
    assert status == 401 and answer["code"] == "UNAUTHENTICATED"


async def test_right_key_is_served(
    secured: Gateway,
    http: aiohttp.ClientSession,
    store: ApiKeyStore,
    requests_topic: Any,
    redis_client: Any,
    names: Names,
) -> None:
    _, secret = await store.create("ci", ("tiny",))
    for headers in (bearer(secret), {"X-API-Key": secret}):
        status, answer, _ = await _call(http, "GET", secured.url + "/v2/models/tiny", headers)
        assert status == 200 and answer["name"] == "tiny"
    call = asyncio.create_task(_call(http, "POST", secured.url + INFER, bearer(secret), json=BODY))
    await serve_one(requests_topic, redis_client, names)
    status, answer, _ = await call
    assert status == 200 and answer["outputs"][0]["name"] == "y"


async def test_model_outside_the_allow_list_is_403(
    secured: Gateway, http: aiohttp.ClientSession, store: ApiKeyStore
) -> None:
    _, secret = await store.create("other-team", ("other",))
    for method, path in (("POST", INFER), ("GET", "/v2/models/tiny"), ("GET", "/v2/models/nonexistent/ready")):
        status, answer, _ = await _call(http, method, secured.url + path, bearer(secret), json=BODY)
        assert status == 403, (path, answer)
        assert answer["code"] == "FORBIDDEN" and "may not use model" in answer["error"]


async def test_revoked_key_is_401_within_the_cache_ttl(
    secured: Gateway, http: aiohttp.ClientSession, store: ApiKeyStore
) -> None:
    key, secret = await store.create("leaving")
    status, _, _ = await _call(http, "GET", secured.url + "/v2/models/tiny", bearer(secret))
    assert status == 200
    await store.revoke(key.key_id)
    revoked_at = time.monotonic()
    while True:
        status, answer, _ = await _call(http, "GET", secured.url + "/v2/models/tiny", bearer(secret))
        if status == 401:
            break
        assert status == 200 and time.monotonic() - revoked_at < 1.0  # TTL 0.3 s plus slack
        await asyncio.sleep(0.05)
    assert answer["code"] == "UNAUTHENTICATED" and "revoked" in answer["error"]


async def test_key_rate_limit_is_429_with_retry_after(
    secured: Gateway, http: aiohttp.ClientSession, store: ApiKeyStore
) -> None:
    _, secret = await store.create("slow", rate=0.5)  # one token, the next in 2 s
    # An empty body is refused after the limiter took its token: fast, no worker needed.
    status, answer, _ = await _call(http, "POST", secured.url + INFER, bearer(secret), data=b"")
    assert status == 400, answer
    status, answer, headers = await _call(http, "POST", secured.url + INFER, bearer(secret), json=BODY)
    assert status == 429 and answer["code"] == "RATE_LIMITED" and "API key" in answer["error"]
    assert headers["Retry-After"] == "2"
    # metadata is not rate limited
    status, _, _ = await _call(http, "GET", secured.url + "/v2/models/tiny", bearer(secret))
    assert status == 200


async def test_buckets_are_shared_by_gateways(
    secured: Gateway,
    auth_settings: GatewaySettings,
    names: Names,
    http: aiohttp.ClientSession,
    store: ApiKeyStore,
) -> None:
    _, secret = await store.create("shared", rate=0.2)  # one token per 5 s across the fleet
    async with Gateway(replace(auth_settings, gateway_id="second"), names=names) as other:
        status, _, _ = await _call(http, "POST", secured.url + INFER, bearer(secret), data=b"")
        assert status == 400
        status, answer, headers = await _call(http, "POST", other.url + INFER, bearer(secret), json=BODY)
        assert status == 429 and answer["code"] == "RATE_LIMITED"
        assert 4 <= int(headers["Retry-After"]) <= 5


async def test_model_rate_limit_without_auth(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> None:
    settings = replace(gateway_settings, model_rate_limits="tiny=0.5,other=100")
    async with Gateway(settings, names=names) as gw:
        status, _, _ = await _call(http, "POST", gw.url + INFER, data=b"")
        assert status == 400
        status, answer, headers = await _call(http, "POST", gw.url + INFER, json=BODY)
        assert status == 429 and "model 'tiny'" in answer["error"] and headers["Retry-After"] == "2"
        # the version route draws from the same model bucket
        status, _, _ = await _call(http, "POST", gw.url + "/v2/models/tiny/versions/1/infer", json=BODY)
        assert status == 429


async def test_auth_off_is_open(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    status, answer, _ = await _call(http, "GET", gateway.url + "/v2/models/tiny")
    assert status == 200 and answer["name"] == "tiny"
    status, answer, _ = await _call(http, "POST", gateway.url + INFER, data=b"")
    assert status == 400  # reached the handler: no key needed


async def test_redis_down_and_key_not_cached_is_503(
    auth_settings: GatewaySettings, names: Names, http: aiohttp.ClientSession
) -> None:
    dead = replace(auth_settings.fleet, redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"))
    _, secret = new_secret()
    async with Gateway(replace(auth_settings, fleet=dead), names=names) as gw:
        started = time.monotonic()
        status, answer, _ = await _call(http, "GET", gw.url + "/v2/models/tiny", bearer(secret))
        assert status == 503 and answer["code"] == "BACKEND_UNAVAILABLE" and "redis" in answer["error"]
        assert time.monotonic() - started < 3.0
        # no key at all is still 401: nothing to look up
        status, answer, _ = await _call(http, "GET", gw.url + "/v2/models/tiny")
        assert status == 401


async def test_input_limits(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> None:
    settings = replace(gateway_settings, max_tensor_elements=8, max_header_field_bytes=1024)
    async with Gateway(settings, names=names) as gw:
        status, answer, _ = await _call(http, "POST", gw.url + INFER, json=BODY)
        assert status == 400 and answer["code"] == "INVALID_INPUT" and "MAX_TENSOR_ELEMENTS" in answer["error"]
        async with http.get(gw.url + "/v2/models/tiny", headers={"X-Big": "a" * 2000}) as resp:
            assert resp.status == 400


async def test_fleet_client_sends_its_key(
    secured: Gateway, store: ApiKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secret = await store.create("client", ("tiny",))
    async with FleetClient(secured.url, api_key=secret) as client:
        assert (await client.model_metadata("tiny"))["name"] == "tiny"
    monkeypatch.setenv(API_KEY_ENV, secret)
    async with FleetClient(secured.url) as client:
        assert (await client.model_metadata("tiny"))["name"] == "tiny"
    monkeypatch.delenv(API_KEY_ENV)
    async with FleetClient(secured.url) as client:
        with pytest.raises(FleetHTTPError) as refused:
            await client.model_metadata("tiny")
    assert refused.value.status == 401


async def test_refused_infer_requests_are_counted_as_failures(
    secured: Gateway, http: aiohttp.ClientSession, store: ApiKeyStore
) -> None:
    _, other_team = await store.create("other-team", ("other",))
    _, slow = await store.create("slow", rate=0.5)
    await _call(http, "POST", secured.url + INFER, json=BODY)  # 401
    await _call(http, "POST", secured.url + INFER, bearer(other_team), json=BODY)  # 403
    await _call(http, "POST", secured.url + INFER, bearer(slow), data=b"")  # 400: took the one token
    status, _, _ = await _call(http, "POST", secured.url + INFER, bearer(slow), json=BODY)
    assert status == 429
    async with http.get(secured.url + "/metrics") as resp:
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    failures = {
        sample.labels["code"]: sample.value
        for sample in families["fleet_gateway_request_failure"].samples
        if sample.name.endswith("_total") and sample.labels["model"] == "tiny"
    }
    assert failures["UNAUTHENTICATED"] == failures["FORBIDDEN"] == failures["RATE_LIMITED"] == 1.0


async def test_jobs_are_seen_only_through_a_key_that_may_use_their_model(
    secured: Gateway, http: aiohttp.ClientSession, store: ApiKeyStore
) -> None:
    _, owner = await store.create("owner", ("tiny",))
    _, colleague = await store.create("colleague", ("tiny",))
    _, outsider = await store.create("outsider", ("other",))
    idempotent = {"Idempotency-Key": "nightly-1"}
    status, answer, _ = await _call(
        http, "POST", secured.url + INFER + "?async=true", bearer(owner) | idempotent, json=BODY
    )
    assert status == 202, answer
    job = f"{secured.url}/v2/jobs/{answer['job_id']}"
    for method in ("GET", "DELETE"):
        status, answer_of_outsider, _ = await _call(http, method, job, bearer(outsider))
        assert status == 404 and answer_of_outsider["code"] == "JOB_NOT_FOUND", method
    status, document, _ = await _call(http, "GET", job, bearer(colleague))
    assert status == 200 and document["model"] == "tiny"
    # The same Idempotency-Key from another key is another request: a new job, not a replay or a 409.
    status, second, headers = await _call(
        http, "POST", secured.url + INFER + "?async=true", bearer(colleague) | idempotent, json=BODY
    )
    assert status == 202 and second["job_id"] != answer["job_id"] and "Idempotent-Replayed" not in headers
    status, replay, headers = await _call(
        http, "POST", secured.url + INFER + "?async=true", bearer(owner) | idempotent, json=BODY
    )
    assert status == 202 and replay["job_id"] == answer["job_id"] and headers["Idempotent-Replayed"] == "true"


async def test_repository_index_lists_what_the_key_may_use(
    secured: Gateway, http: aiohttp.ClientSession, store: ApiKeyStore
) -> None:
    _, everything = await store.create("ops")
    _, other_team = await store.create("other-team", ("other",))
    status, index, _ = await _call(http, "POST", secured.url + "/v2/repository/index", bearer(everything), json={})
    assert status == 200
    assert index == [{"name": "tiny", "version": v, "state": "READY"} for v in ("1", "2")]
    status, index, _ = await _call(http, "POST", secured.url + "/v2/repository/index", bearer(other_team))
    assert (status, index) == (200, [])  # "tiny" is outside its allow-list
    status, _, _ = await _call(http, "POST", secured.url + "/v2/repository/index", json={})
    assert status == 401
    for bad in (b"[1]", b'{"ready": "yes"}', b'{"load": true}', b"{"):
        status, answer, _ = await _call(
            http, "POST", secured.url + "/v2/repository/index", bearer(everything), data=bad
        )
        assert status == 400 and answer["code"] == "INVALID_REQUEST", bad
