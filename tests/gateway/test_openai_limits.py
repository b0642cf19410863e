"""The /v1 routes' refusals as the official ``openai`` SDK sees them: OpenAI's error body for a missing or unknown
API key (the auth middleware), and the token rate limits (prompt + max_tokens from a per-model or per-key bucket)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from gateway import Gateway, GatewaySettings
from schemas import ModelRecord, Names
from schemas.apikeys import ApiKeyStore

from .conftest import wait_ready

openai = pytest.importorskip("openai")


@pytest.fixture
async def limited(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> AsyncIterator[Gateway]:
    settings = replace(gateway_settings, auth=True, model_token_limits="tiny=10", key_token_rate=1000, rate_burst_s=4)
    async with Gateway(settings, names=names) as gw:
        await wait_ready(http, gw)
        yield gw


def _client(gw: Gateway, key: str) -> Any:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=10)


async def test_auth_failures_on_v1_have_openai_error_bodies(limited: Gateway) -> None:
    client = _client(limited, "fk_nope.secret")
    with pytest.raises(openai.AuthenticationError) as refused:
        await client.models.list()
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "UNAUTHENTICATED" and body["type"] == "authentication_error"
    assert "API key" in body["message"]
    await client.close()


async def test_token_limit_counts_prompt_and_max_tokens(limited: Gateway, redis_client: Any, names: Names) -> None:
    _, secret = await ApiKeyStore(redis_client, names).create("tokens")
    client = _client(limited, secret)
    prompt = "x" * 80  # 20 tokens as estimated; + 10 max_tokens = 30 of the model's 40 (10/s for 4 s)
    with pytest.raises(openai.BadRequestError):  # within the limit: refused afterwards as not a generative model
        await client.completions.create(model="tiny", prompt=prompt, max_tokens=10)
    with pytest.raises(openai.RateLimitError) as limited_error:
        await client.completions.create(model="tiny", prompt=prompt, max_tokens=10)
    body = limited_error.value.body
    assert isinstance(body, dict) and body["code"] == "RATE_LIMITED" and body["type"] == "rate_limit_error"
    assert "model 'tiny' (10 tokens/s)" in body["message"]
    assert int(limited_error.value.response.headers["Retry-After"]) >= 1
    await client.close()
