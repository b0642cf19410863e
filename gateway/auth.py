"""API-key authentication, per-key model allow-lists and rate limits: one aiohttp middleware.

Order per request: open routes (health probes, ``/v2``, ``/v2/openapi.json``, ``/metrics`` unless
``auth_metrics``) pass untouched. With ``auth`` on, the key comes from ``Authorization: Bearer <key>``
or ``X-API-Key``; a missing, malformed, unknown or revoked key is ``401 UNAUTHENTICATED`` (with
``WWW-Authenticate: Bearer``), a model outside the key's allow-list ``403 FORBIDDEN`` (before the
model is even looked up, so a key cannot probe which models exist). Key records are cached per
gateway for ``auth_cache_ttl_s`` in a bounded LRU, so a cached key costs no Redis round trip; an
uncached key with Redis unreachable is ``503 BACKEND_UNAVAILABLE`` (never 401).

Rate limits apply to infer requests (``POST .../infer``, sync and async): the key's rate (from its
record) and the model's (``model_rate_limits``) are token buckets in Redis, checked against this gateway's
leased blocks of each bucket (``gateway.ratelimit``); an empty bucket is ``429 RATE_LIMITED`` with
``Retry-After`` (whole seconds, rounded up). Without any limit for the request no Redis call is made.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from schemas import ErrorCode, FleetError, Names
from schemas.apikeys import ApiKey, ApiKeyStore, parse_secret

from .errors import WIRE_ID_KEY, BackendDownError, GatewayError, Handler, error_response, redis_bounded
from .metrics import GatewayMetrics
from .ratelimit import Bucket, TokenBuckets
from .settings import GatewaySettings

log = logging.getLogger("fleet.gateway")

API_KEY_HEADER = "X-API-Key"
AUTHORIZATION = "Authorization"
#: Paths that never need a key: probes, server metadata and the API description.
OPEN_PATHS = frozenset({"/v2", "/v2/", "/v2/health/live", "/v2/health/ready", "/v2/openapi.json"})
METRICS_PATH = "/metrics"
#: The request's API key record (absent when auth is off or the route is open).
API_KEY = web.RequestKey("fleet_api_key", ApiKey)


class AuthError(GatewayError):
    """An error answer that carries extra response headers (WWW-Authenticate, Retry-After)."""

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class UnauthenticatedError(AuthError):
    """No usable API key: missing, malformed, unknown or revoked."""

    code = ErrorCode.UNAUTHENTICATED

    def __init__(self, problem: str) -> None:
        super().__init__(f"unauthenticated: {problem}", {"WWW-Authenticate": 'Bearer realm="inference-fleet"'})


class ForbiddenError(AuthError):
    """The key may not use this model."""

    code = ErrorCode.FORBIDDEN

    def __init__(self, key: ApiKey, model: str) -> None:
        super().__init__(f"API key {key.key_id!r} ({key.name}) may not use model {model!r}", {})


class RateLimitedError(AuthError):
    """A token bucket is empty."""

    code = ErrorCode.RATE_LIMITED
    retriable = True

    def __init__(self, what: str, rate: float, retry_after_s: int, unit: str = "requests") -> None:
        super().__init__(
            f"rate limit of {what} ({rate:g} {unit}/s) exceeded; retry in {retry_after_s} s",
            {"Retry-After": str(retry_after_s)},
        )


class KeyCache:
    """Bounded LRU of key id -> (record or None for an unknown id, expiry on the monotonic clock)."""

    def __init__(self, ttl_s: float, size: int) -> None:
        self._ttl_s = ttl_s
        self._size = size
        self._entries: OrderedDict[str, tuple[ApiKey | None, float]] = OrderedDict()

    def get(self, key_id: str) -> tuple[bool, ApiKey | None]:
        """(hit, record); an expired entry is a miss."""
        entry = self._entries.get(key_id)
        if entry is None or entry[1] <= time.monotonic():
            return False, None
        self._entries.move_to_end(key_id)
        return True, entry[0]

    def put(self, key_id: str, key: ApiKey | None) -> None:
        """Remember ``key`` (None: no such key) for the TTL, dropping the least recently used beyond the size."""
        self._entries[key_id] = (key, time.monotonic() + self._ttl_s)
        self._entries.move_to_end(key_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def presented_secret(request: web.BaseRequest) -> str | None:
    """The key in ``Authorization: Bearer`` (wins) or ``X-API-Key``; None when neither is there."""
    return secret_in(request.headers)


def secret_in(headers: Mapping[str, str]) -> str | None:
    """``presented_secret`` of a request's ``headers`` (a case-insensitive mapping)."""
    header = headers.get(AUTHORIZATION)
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if headers.get(API_KEY_HEADER) is None:
            raise UnauthenticatedError("the Authorization header must read 'Bearer <key>'")
    key = headers.get(API_KEY_HEADER)
    return key.strip() if key is not None else None


class Guard:
    """The middleware's state: key store and cache, token buckets, per-model rates."""

    def __init__(self, settings: GatewaySettings, names: Names, redis: Any, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._names = names
        self._store = ApiKeyStore(redis, names)
        self._buckets = TokenBuckets(redis)
        self.cache = KeyCache(settings.auth_cache_ttl_s, settings.auth_cache_size)
        self._model_rates = settings.model_rates()
        self._model_token_rates = settings.model_token_rates()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate, check the allow-list and the rate limits, then run ``handler``."""
        model = request.match_info.get("model")
        infer = model is not None and request.method == "POST" and request.path.endswith("/infer")
        try:
            key = await self.check(request.headers, request.path, model, infer=infer)
            if key is not None:
                request[API_KEY] = key
        except AuthError as exc:
            self.refused(exc, model if infer else None, request.get(WIRE_ID_KEY, ""), request.path)
            if request.path.startswith("/v1/"):  # OpenAI's clients read OpenAI's error body
                response = web.json_response(openai_auth_error(exc), status=exc.http_status)
            else:
                response = error_response(exc.http_status, exc.message, exc.code)
            response.headers.update(exc.headers)
            return response
        return await handler(request)

    def refused(self, exc: AuthError, infer_model: str | None, request_id: str, path: str) -> None:
        """Count (for an infer request for ``infer_model``) and log a refused request."""
        if infer_model is not None:
            self._metrics.refused(infer_model, exc.code.value)
        log.info(
            "request refused",
            extra={
                "request_id": request_id,
                "path": path,
                "code": exc.code.value,
                "status": exc.http_status,
                "error": exc.message,
            },
        )

    async def check(self, headers: Mapping[str, str], path: str, model: str | None, *, infer: bool) -> ApiKey | None:
        """The middleware's checks of a request's parts (aiohttp's requests and the HTTP front's): ``authorize`` with
        the key presented in ``headers``, or with none on a path that needs none (auth off, the health and server
        routes, ``/metrics`` unless FLEET_GATEWAY_AUTH_METRICS). Raises the AuthError to answer with."""
        settings = self._settings
        if settings.auth and path not in OPEN_PATHS and (path != METRICS_PATH or settings.auth_metrics):
            return await self.authorize(secret_in(headers), model, infer=infer)
        if infer and model is not None:
            await self._limit(None, model)
        return None

    async def authorize(self, secret: str | None, model: str | None, *, infer: bool) -> ApiKey | None:
        """The middleware's checks for a caller outside aiohttp (the gRPC service): the key ``secret`` (None:
        none presented) when auth is on, its allow-list for ``model``, the rate limits of an infer request.
        Raises the AuthError the middleware would answer with."""
        key = None
        if self._settings.auth:
            key = await self._verify(secret)
            if model is not None and not key.allows(model):
                raise ForbiddenError(key, model)
        if infer and model is not None:
            await self._limit(key, model)
        return key

    async def _verify(self, secret: str | None) -> ApiKey:
        if secret is None:
            raise UnauthenticatedError(f"an API key is required (Authorization: Bearer <key> or {API_KEY_HEADER})")
        key_id = parse_secret(secret)
        if key_id is None:
            raise UnauthenticatedError("malformed API key")
        key = await self._lookup(key_id)
        if key is None or not key.verify(secret):
            raise UnauthenticatedError("unknown API key")
        if key.revoked:
            raise UnauthenticatedError(f"API key {key_id!r} was revoked")
        return key

    async def _lookup(self, key_id: str) -> ApiKey | None:
        hit, key = self.cache.get(key_id)
        if hit:
            return key
        try:
            key = await redis_bounded(self._store.get(key_id), self._settings.backend_timeout_s, "API key lookup")
        except BackendDownError:
            raise
        except FleetError as exc:  # a damaged record: refuse the key, log via the error middleware
            raise UnauthenticatedError(exc.message) from None
        self.cache.put(key_id, key)
        return key

    def buckets(self, key: ApiKey | None, model: str) -> list[Bucket]:
        """The token buckets an infer request of ``key`` for ``model`` draws from."""
        burst = self._settings.rate_burst_s
        found: list[Bucket] = []
        if key is not None and key.rate > 0:
            found.append(Bucket.for_rate(self._names.key_bucket_key(key.key_id), key.rate, burst))
        model_rate = self._model_rates.get(model)
        if model_rate is not None:
            found.append(Bucket.for_rate(self._names.model_bucket_key(model), model_rate, burst))
        return found

    def token_buckets(self, key: ApiKey | None, model: str) -> list[Bucket]:
        """The token buckets (in model tokens) a /v1 request of ``key`` for ``model`` draws from."""
        burst = self._settings.rate_burst_s
        found: list[Bucket] = []
        if key is not None and self._settings.key_token_rate > 0:
            rate = self._settings.key_token_rate
            found.append(Bucket.for_rate(self._names.key_bucket_key(key.key_id) + ":tokens", rate, burst))
        model_rate = self._model_token_rates.get(model)
        if model_rate is not None:
            found.append(Bucket.for_rate(self._names.model_bucket_key(model) + ":tokens", model_rate, burst))
        return found

    async def limit_tokens(self, key: ApiKey | None, model: str, tokens: int) -> None:
        """Take ``tokens`` from the key's and the model's token buckets; RateLimitedError when one is short.
        A request over a bucket's capacity waits for a full bucket (it takes all of it)."""
        await self._take(self.token_buckets(key, model), key, model, tokens, "tokens")

    async def _limit(self, key: ApiKey | None, model: str) -> None:
        await self._take(self.buckets(key, model), key, model, 1, "requests")

    async def _take(self, buckets: list[Bucket], key: ApiKey | None, model: str, amount: int, unit: str) -> None:
        if not buckets:
            return
        verdict = await redis_bounded(
            self._buckets.take(buckets, amount), self._settings.backend_timeout_s, "rate limit check"
        )
        if verdict.allowed or verdict.limiting is None:
            return
        limiting = verdict.limiting
        key_bucket = self._names.key_bucket_key(key.key_id) if key is not None else None
        is_key = key_bucket is not None and limiting.key in (key_bucket, key_bucket + ":tokens")
        what = f"API key {key.key_id!r}" if key is not None and is_key else f"model {model!r}"
        raise RateLimitedError(what, limiting.rate, verdict.retry_after_s, unit)


_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_auth_error(exc: AuthError) -> dict[str, Any]:
    """OpenAI's error body for a refused /v1 request."""
    kind = _OPENAI_TYPES.get(exc.http_status, "invalid_request_error")
    return {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code.value}}
