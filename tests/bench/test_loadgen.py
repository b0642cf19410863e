"""The load generator's lean HTTP client against a small aiohttp server (no fleet): framing, errors, reconnects."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from bench.loadgen import closed_loop


async def _infer(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    model = request.match_info["model"]
    answer = orjson.dumps({"model_name": model, "parameters": {"batch_size": 3}, "echo": len(body)})
    if model == "chunked":  # no Content-Length: chunked transfer encoding
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(answer[:5])
        await response.write(answer[5:])
        await response.write_eof()
        return response
    if model == "failing":
        return web.json_response({"error": "no"}, status=503)
    response = web.Response(body=answer, content_type="application/json")
    if model == "closing":  # the server ends every connection after its answer
        response.force_close()
    return response


@pytest.fixture(scope="module")
async def url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", _infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("model", ["sized", "chunked", "closing"])
async def test_the_lean_client_frames_each_response_and_reads_the_batch_size(url: str, model: str) -> None:
    result = await closed_loop(url, model, "x", 4, 2, 0.3, warmup_s=0.05, json_bodies=True)
    assert result.errors == 0, result.error_samples
    assert result.requests > 2
    assert result.mean_batch_size == 3.0


async def test_the_aiohttp_client_measures_the_same_way(url: str) -> None:
    result = await closed_loop(url, "sized", "x", 4, 2, 0.3, warmup_s=0.05, json_bodies=True, http_client="aiohttp")
    assert result.errors == 0, result.error_samples
    assert result.requests > 2
    assert result.mean_batch_size == 3.0


async def test_the_lean_client_counts_error_statuses_as_errors(url: str) -> None:
    result = await closed_loop(url, "failing", "x", 4, 2, 0.2, warmup_s=0.0, json_bodies=True)
    assert result.requests == 0
    assert result.errors > 0
    assert '"error"' in result.error_samples[0]


async def test_the_lean_client_counts_a_refused_connection_as_an_error() -> None:
    result = await closed_loop("http://127.0.0.1:9", "m", "x", 4, 1, 0.1, warmup_s=0.0)
    assert result.requests == 0
    assert result.errors > 0
