"""The gateway's lean HTTP front: which heads it serves, request order on a connection, the hand-over to aiohttp,
and answers identical to aiohttp's (against a real broker and Redis; a test-side stand-in answers as a worker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.http_front import parse_head
from gateway.settings import GatewaySettings
from schemas import ModelRecord, Names

from .conftest import serve_one, wait_ready

HEAD = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10"


def _parse(head: bytes, max_body: int = 1 << 16) -> Any:
    return parse_head(head, max_body, 8190, 100)


def test_a_plain_infer_head_is_served_with_its_model_version_and_headers() -> None:
    head = _parse(HEAD.replace(b"/tiny/", b"/tiny/versions/2/") + b"\r\nX-Request-Id: abc\r\nx-request-id: second")
    assert (head.model, head.version, head.body_bytes) == ("tiny", "2", 10)
    assert head.path == "/v2/models/tiny/versions/2/infer"
    assert head.headers.get("X-REQUEST-ID") == "abc"  # any case; the first of repeated headers
    assert "content-type" in head.headers and head.headers["Content-Type"] == "application/json"
    assert _parse(HEAD).version is None


@pytest.mark.parametrize(
    ("line", "route", "model", "version"),
    [
        (b"GET /v2 HTTP/1.1", "server", None, None),
        (b"GET /v2/health/live HTTP/1.1", "live", None, None),
        (b"GET /v2/health/ready HTTP/1.1", "ready", None, None),
        (b"GET /v2/models/tiny HTTP/1.1", "model", "tiny", None),
        (b"GET /v2/models/stats/versions/1 HTTP/1.1", "model", "stats", "1"),
        (b"GET /v2/models/tiny/versions/2/ready HTTP/1.1", "model_ready", "tiny", "2"),
    ],
)
def test_the_read_only_routes_without_a_body_are_served(
    line: bytes, route: str, model: str | None, version: str | None
) -> None:
    head = _parse(line + b"\r\nHost: x")
    assert (head.route, head.model, head.version, head.body_bytes) == (route, model, version, 0)
    assert _parse(line + b"\r\nContent-Length: 0").route == route


@pytest.mark.parametrize(
    "head",
    [
        HEAD.replace(b"POST", b"GET"),
        HEAD.replace(b"POST", b"HEAD"),
        b"GET /v2/models/stats HTTP/1.1",  # the statistics route
        b"GET /v2/models/tiny/config HTTP/1.1",
        b"GET /v2/health/ready?verbose=1 HTTP/1.1",
        b"GET /v2/ HTTP/1.1",
        b"GET /v2/models/tiny/ready HTTP/1.1\r\nContent-Length: 2",  # a body
        b"DELETE /v2/models/tiny HTTP/1.1",
        b"POST /v2/models/tiny/ready HTTP/1.1\r\nContent-Length: 0",
        HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
        HEAD.replace(b"/infer", b"/infer?async=true"),
        HEAD.replace(b"/tiny/", b"/t%69ny/"),
        HEAD.replace(b"/infer", b"/ready"),
        HEAD.replace(b"Content-Length: 10", b"Transfer-Encoding: chunked"),
        HEAD + b"\r\nContent-Length: 10",  # repeated
        HEAD.replace(b"10", b"1x"),
        HEAD.replace(b"10", b"70000"),  # over the body limit
        HEAD + b"\r\nContent-Encoding: gzip",
        HEAD + b"\r\nExpect: 100-continue",
        HEAD + b"\r\nPrefer: respond-async",
        HEAD + b"\r\nIdempotency-Key: k",
        HEAD + b"\r\nConnection: upgrade",
        HEAD + b"\r\nUpgrade: h2c",
        HEAD + b"\r\nX-Name: caf\xc3\xa9",  # not ASCII
        HEAD + b"\r\n folded",
        HEAD + b"\r\nBad Name: x",
        HEAD + b"\r\nNoColon",
        HEAD + b"\r\nX-A: b\nTransfer-Encoding: chunked",  # a bare LF: another parser may see two headers
        HEAD + b"\r\nX-A: b\x00",
        HEAD + b"\r\nX-Big: " + b"x" * 9000,
        HEAD + b"".join(b"\r\nX-%d: y" % i for i in range(100)),
    ],
)
def test_any_other_head_goes_to_aiohttp(head: bytes) -> None:
    assert _parse(head) is None


def _request(body: bytes, *extra: bytes, path: bytes = b"/v2/models/tiny/infer") -> bytes:
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: test", b"Content-Type: application/json", *extra]
    return b"\r\n".join([*lines, b"Content-Length: %d" % len(body), b"", b""]) + body


def _body(request_id: str) -> bytes:
    return json.dumps(
        {"id": request_id, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    ).encode()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: status, headers (lower-case names) and body."""
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split(" ")[1]), headers, body


async def _open(gw: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = gw.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


@contextlib.asynccontextmanager
async def _answered(
    gw: Gateway, requests_topic: Any, redis_client: Any, names: Names, count: int
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection to ``gw`` while a stand-in worker answers ``count`` requests (all of them by the end)."""

    async def serve() -> None:
        for _ in range(count):
            await serve_one(requests_topic, redis_client, names)

    serving = asyncio.create_task(serve())
    reader, writer = await _open(gw)
    try:
        yield reader, writer
        await serving
    finally:
        serving.cancel()
        writer.close()


async def test_pipelined_requests_are_answered_in_order_on_their_connection(
    gateway: Gateway, requests_topic: Any, redis_client: Any, names: Names
) -> None:
    async with _answered(gateway, requests_topic, redis_client, names, 3) as (reader, writer):
        writer.write(b"".join(_request(_body(f"r{i}"), b"X-Request-Id: c%d" % i) for i in range(3)))
        for i in range(3):
            status, headers, body = await _response(reader)
            assert status == 200, body
            assert json.loads(body)["id"] == f"r{i}" and headers["x-request-id"] == f"c{i}"


async def test_a_connection_moves_to_aiohttp_at_its_first_other_request_and_keeps_being_answered(
    gateway: Gateway, requests_topic: Any, redis_client: Any, names: Names
) -> None:
    async with _answered(gateway, requests_topic, redis_client, names, 2) as (reader, writer):
        writer.write(_request(_body("front")))
        assert (await _response(reader))[0] == 200
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n" + _request(_body("aiohttp")))
        status, _, body = await _response(reader)
        assert (status, json.loads(body)) == (200, {"live": True})
        status, _, body = await _response(reader)
        assert status == 200 and json.loads(body)["id"] == "aiohttp"


async def test_a_body_that_follows_its_head_later_is_read(
    gateway: Gateway, requests_topic: Any, redis_client: Any, names: Names
) -> None:
    async with _answered(gateway, requests_topic, redis_client, names, 1) as (reader, writer):
        request = _request(_body("late"))
        split = request.index(b"\r\n\r\n") + 4
        writer.write(request[:split])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(request[split:])
        status, _, body = await _response(reader)
        assert status == 200 and json.loads(body)["id"] == "late"


async def test_a_request_split_anywhere_across_packets_is_answered(
    gateway: Gateway, requests_topic: Any, redis_client: Any, names: Names
) -> None:
    request = _request(_body("split"))
    head_end = request.index(b"\r\n\r\n")
    cuts = [1, 20, head_end, head_end + 2, head_end + 4, len(request) - 1]
    async with _answered(gateway, requests_topic, redis_client, names, len(cuts)):
        for cut in cuts:  # a connection each: a request that goes to aiohttp takes its connection along
            reader, writer = await _open(gateway)
            writer.write(request[:cut])
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(request[cut:])
            status, _, body = await _response(reader)
            assert status == 200 and json.loads(body)["id"] == "split", (cut, body)
            writer.close()


async def test_a_connection_without_a_request_head_is_closed_after_the_header_timeout(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession
) -> None:
    async with Gateway(replace(gateway_settings, header_timeout_s=0.2), names=names) as gw:
        reader, writer = await _open(gw)
        writer.write(b"POST /v2/models/tiny/infer HTTP/1.1\r\n")  # never completed
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()


@pytest.mark.parametrize("auth", [False, True], ids=["open", "auth"])
async def test_the_front_answers_errors_as_aiohttp_does(
    gateway_settings: GatewaySettings, names: Names, registered: ModelRecord, http: aiohttp.ClientSession, auth: bool
) -> None:
    cases = [
        *(
            b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % path
            for path in (b"/v2", b"/v2/health/live", b"/v2/health/ready", b"/v2/models/tiny", b"/v2/models/tiny/ready")
        ),
        b"GET /v2/models/nope/versions/1/ready HTTP/1.1\r\nHost: test\r\n\r\n",
        _request(_body("a"), path=b"/v2/models/nope/infer"),
        _request(b"{not json", b"X-Request-Id: mine"),
        _request(_body("b").replace(b"[1, 16]", b"[1, 15]")),
        _request(_body("c"), path=b"/v2/models/tiny/versions/9/infer"),
        b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",  # last: closes
    ]
    answers = []
    for front in (True, False):
        settings = replace(gateway_settings, http_front=front, auth=auth)
        async with Gateway(settings, names=names) as gw:
            await wait_ready(http, gw)
            reader, writer = await _open(gw)
            seen = []
            for case in cases:
                writer.write(case)
                status, headers, body = await _response(reader)
                if b"close" in case:
                    async with asyncio.timeout(5):
                        assert await reader.read() == b""  # closed after the answer
                del headers["date"]
                if b"mine" not in case:
                    del headers["x-request-id"]  # each gateway's own request id
                seen.append((status, headers, json.loads(body)))
            writer.close()
            answers.append(seen)
    assert answers[0] == answers[1]
    statuses = [status for status, _, _ in answers[0]]
    assert statuses == [200, 200, 200] + ([401] * 7 if auth else [200, 200, 404, 404, 400, 400, 404]) + [200]
    assert answers[0][-1][1]["connection"] == "close"
    assert answers[0][7][1]["x-request-id"] == "mine"
