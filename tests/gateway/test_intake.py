"""Request intake over raw sockets: header and body read timeouts, 413 before ``100 Continue``, clients that
go away mid-upload, admission by body bytes in flight, and large bodies decoded off the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway import Gateway, GatewaySettings
from schemas import ModelRecord, Names

from .conftest import wait_ready

INFER = "/v2/models/tiny/infer"
SMALL = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


@pytest.fixture
async def started(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> AsyncIterator[tuple[GatewaySettings, Names]]:
    yield gateway_settings, names


async def _open(gw: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(gw.url)
    assert url.hostname is not None and url.port is not None
    return await asyncio.open_connection(url.hostname, url.port)


def _head(length: int | None, *extra: str) -> bytes:
    lines = [f"POST {INFER} HTTP/1.1", "Host: gateway", "Content-Type: application/json", *extra]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], dict[str, str]]:
    """Status, headers and JSON body of the next response on a raw connection."""
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, json.loads(body)


async def _failures(http: aiohttp.ClientSession, gw: Gateway, code: str) -> float:
    async with http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fleet_gateway_request_failure_total{") and f'code="{code}"' in line
    )


async def test_a_connection_that_never_completes_its_headers_is_closed(
    started: tuple[GatewaySettings, Names], http: aiohttp.ClientSession
) -> None:
    settings, names = started
    async with Gateway(replace(settings, header_timeout_s=0.3), names=names) as gw:
        reader, writer = await _open(gw)
        writer.write(f"POST {INFER} HTTP/1.1\r\nHost: gateway\r\n".encode())  # half a request head
        await writer.drain()
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # closed by the gateway, no answer
        writer.close()


async def test_a_chunked_body_that_stops_gets_408_and_the_connection_closes(
    started: tuple[GatewaySettings, Names], http: aiohttp.ClientSession
) -> None:
    settings, names = started
    async with Gateway(replace(settings, body_timeout_s=0.3), names=names) as gw:
        await wait_ready(http, gw)
        reader, writer = await _open(gw)
        writer.write(_head(None) + b"5\r\n{\"inp\r\n")  # one chunk, then nothing more
        await writer.drain()
        async with asyncio.timeout(10):
            status, headers, body = await _answer(reader)  # then aiohttp closes it (after its lingering time)
        writer.close()
        assert (status, body["code"]) == (408, "REQUEST_TIMEOUT") and headers["connection"] == "close"
        assert "not received within 0.3 s (5 bytes arrived)" in body["error"]


async def test_a_declared_oversized_body_gets_413_instead_of_100_continue(
    started: tuple[GatewaySettings, Names], http: aiohttp.ClientSession
) -> None:
    settings, names = started
    async with Gateway(replace(settings, max_body_bytes=1 << 20), names=names) as gw:
        await wait_ready(http, gw)
        reader, writer = await _open(gw)
        writer.write(_head(40 << 20, "Expect: 100-continue"))
        await writer.drain()
        async with asyncio.timeout(10):
            status, _, body = await _answer(reader)  # the first answer: no "100 Continue" before it
        writer.close()
        assert (status, body["code"]) == (413, "PAYLOAD_TOO_LARGE")
        assert f"request body of {40 << 20} bytes exceeds the limit of {1 << 20} bytes" in body["error"]
        # A body within the limit still gets 100 Continue and its answer.
        reader, writer = await _open(gw)
        payload = json.dumps(SMALL).encode()
        writer.write(_head(len(payload), "Expect: 100-continue", "X-Fleet-Timeout-Ms: 50"))
        await writer.drain()
        async with asyncio.timeout(10):
            assert await reader.readline() == b"HTTP/1.1 100 Continue\r\n"
            assert await reader.readline() == b"\r\n"
            writer.write(payload)
            status, _, body = await _answer(reader)
        writer.close()
        assert (status, body["code"]) == (504, "DEADLINE_EXCEEDED")  # no worker in this test


async def test_a_client_gone_mid_upload_is_counted_as_a_disconnect_not_an_error(
    started: tuple[GatewaySettings, Names], http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    settings, names = started
    async with Gateway(settings, names=names) as gw:
        await wait_ready(http, gw)
        reader, writer = await _open(gw)
        writer.write(_head(1000) + b'{"inputs": [')
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        async with asyncio.timeout(10):
            for _ in range(1_000_000):  # until the gateway has seen the disconnect
                if await _failures(http, gw, "CLIENT_DISCONNECTED"):
                    break
                await asyncio.sleep(0.02)
        assert await _failures(http, gw, "INTERNAL") == 0
    errors = [r for r in caplog.records if r.name == "fleet.gateway" and r.levelno >= logging.ERROR]
    assert errors == []


async def test_body_bytes_in_flight_over_the_limit_are_503_before_reading(
    started: tuple[GatewaySettings, Names], http: aiohttp.ClientSession
) -> None:
    settings, names = started
    async with Gateway(replace(settings, max_in_flight_bytes=1000), names=names) as gw:
        await wait_ready(http, gw)
        reader, writer = await _open(gw)
        writer.write(_head(900) + b'{"inputs": [')  # 900 bytes declared, still arriving
        await writer.drain()
        async with asyncio.timeout(10):
            while True:  # wait until the gateway holds those bytes (the second request is refused then)
                async with http.post(gw.url + INFER, json=SMALL) as resp:
                    answer = await resp.json()
                    if resp.status == 503:
                        break
                await asyncio.sleep(0.02)
        writer.close()
        assert answer["code"] == "OVERLOADED" and resp.headers["Retry-After"] == "1"
        assert "900 body bytes in flight" in answer["error"]
        assert "FLEET_GATEWAY_MAX_IN_FLIGHT_BYTES=1000" in answer["error"]
