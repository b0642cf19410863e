"""``POST /v1/files`` with a malformed multipart body answers 400 with OpenAI's error body (was a 500 INTERNAL:
aiohttp's multipart reader raises ValueError or a parser error, which the route did not map), and a body that
aiohttp itself refuses on a /v1 Files route still gets OpenAI's error body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway import Gateway, GatewaySettings
from schemas import FleetSettings, Names

from .conftest import wait_ready

BOUNDARY = "b0undary"
BAD_HEADER = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="\x1d\x18"\r\n\r\nx\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--{BOUNDARY}--\r\n'
).encode()


@pytest.fixture
async def files_gateway(
    fleet_settings: FleetSettings, names: Names, tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        port=0, fleet=fleet_settings, backend_timeout_s=1.0, batches=False, files_dir=str(tmp_path / "files")
    )
    async with Gateway(settings, names=names) as gw:
        await wait_ready(http, gw)
        yield gw


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\n\r\n"),  # no boundary parameter
        (f"multipart/form-data; boundary={BOUNDARY}", BAD_HEADER),  # a part header with control characters
    ],
    ids=["no-boundary", "bad-part-header"],
)
async def test_a_malformed_multipart_upload_is_a_400_with_openai_body(
    files_gateway: Gateway, http: aiohttp.ClientSession, content_type: str, body: bytes
) -> None:
    async with http.post(files_gateway.url + "/v1/files", data=body, headers={"Content-Type": content_type}) as resp:
        status, answer = resp.status, await resp.json()
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["code"] == "INVALID_REQUEST"
    assert "multipart/form-data body is malformed" in answer["error"]["message"]


async def test_a_batch_body_over_the_size_limit_is_a_413_with_openai_body(
    fleet_settings: FleetSettings, names: Names, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = GatewaySettings(
        port=0, fleet=fleet_settings, backend_timeout_s=1.0, batches=False, files_dir=str(tmp_path / "files"),
        max_body_bytes=1024,
    )  # fmt: skip
    body = b'{"input_file_id": "' + b"f" * 4096 + b'"}'
    async with Gateway(settings, names=names) as gw:
        await wait_ready(http, gw)
        async with http.post(gw.url + "/v1/batches", data=body, headers={"Content-Type": "application/json"}) as resp:
            status, answer = resp.status, await resp.json()
    assert status == 413, answer
    assert answer["error"]["type"] == "invalid_request_error"
