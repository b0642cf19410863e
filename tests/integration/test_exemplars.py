"""Exemplars: with tracing on, a request's latency samples in the gateway's and the worker's ``/metrics``
(OpenMetrics, asked for in the ``Accept`` header as Prometheus does) carry its trace id; an unsampled trace's do
not; with tracing off there is none, and the Prometheus text format is answered unless OpenMetrics is asked for.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from common import tracing
from gateway import Gateway, GatewaySettings
from schemas import FleetSettings, ModelRecord
from schemas.settings import TracingSettings
from workers import Worker, WorkerSettings

pytestmark = pytest.mark.integration

X = np.ones((1, 16), np.float32)
#: What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
SAMPLED, UNSAMPLED = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
async def collector() -> AsyncIterator[str]:
    """An OTLP/HTTP endpoint that accepts (and drops) every export: the spans are not what is tested here."""

    async def export(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def _infer(session: aiohttp.ClientSession, url: str, traceparent: str) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": X.ravel().tolist()}]}
    async with session.post(f"{url}/v2/models/tiny/infer", json=body, headers={"traceparent": traceparent}) as r:
        assert r.status == 200, await r.text()


async def _scrape(session: aiohttp.ClientSession, url: str, accept: str | None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with session.get(f"{url}/metrics", headers=headers) as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


def _exemplar_ids(text: str, family: str) -> set[str]:
    """The trace ids of the exemplars on the buckets of ``family`` for model ``tiny``."""
    pattern = rf'^{family}_bucket\{{[^}}]*model="tiny"[^}}]*\}} \S+ # \{{trace_id="([0-9a-f]{{32}})"\}}'
    return set(re.findall(pattern, text, re.MULTILINE))


async def _worker_exemplars(session: aiohttp.ClientSession, url: str, requests: int) -> set[str]:
    """The worker's exemplar ids once it has observed ``requests`` request durations of ``tiny`` (it observes
    them after the replies are delivered: just after the gateway answered)."""
    count = f'fleet_worker_request_duration_seconds_count{{model="tiny",version="1"}} {float(requests)}'
    async with asyncio.timeout(10):
        while True:
            content_type, text = await _scrape(session, url, PROMETHEUS_ACCEPT)
            assert content_type.startswith("application/openmetrics-text")
            if count in text:
                return _exemplar_ids(text, "fleet_worker_request_duration_seconds")
            await asyncio.sleep(0.05)


async def test_latency_samples_carry_the_trace_id(
    collector: str, fleet_settings: FleetSettings, tiny_model: ModelRecord
) -> None:
    assert tracing.configure(TracingSettings(otlp_endpoint=collector, export_delay_ms=50), "fleet-test")
    try:
        async with (
            Gateway(GatewaySettings(fleet=fleet_settings, port=0, default_timeout_s=20)) as gateway,
            Worker(WorkerSettings(models=("tiny",), fleet=fleet_settings)) as worker,
            aiohttp.ClientSession() as session,
        ):
            await asyncio.gather(gateway.wait_ready(), worker.wait_ready(30))
            worker.metrics.serve(0, addr="127.0.0.1")
            worker_url = f"http://127.0.0.1:{worker.metrics.port}"

            # A trace the caller did not sample: no exemplar points at a trace that is not exported.
            await _infer(session, gateway.url, f"00-{UNSAMPLED}-00f067aa0ba902b7-00")
            content_type, text = await _scrape(session, gateway.url, PROMETHEUS_ACCEPT)
            assert content_type.startswith("application/openmetrics-text; version=1.0.0")
            assert text.endswith("# EOF\n")
            assert _exemplar_ids(text, "fleet_gateway_request_duration_seconds") == set()
            assert await _worker_exemplars(session, worker_url, 1) == set()

            await _infer(session, gateway.url, f"00-{SAMPLED}-00f067aa0ba902b7-01")
            _, text = await _scrape(session, gateway.url, PROMETHEUS_ACCEPT)
            assert _exemplar_ids(text, "fleet_gateway_request_duration_seconds") == {SAMPLED}
            assert await _worker_exemplars(session, worker_url, 2) == {SAMPLED}

            # The plain text format (no Accept header) has no exemplars.
            content_type, text = await _scrape(session, gateway.url, None)
            assert content_type == CONTENT_TYPE_LATEST
            assert 'fleet_gateway_request_duration_seconds_count{model="tiny"' in text and "trace_id" not in text
    finally:
        tracing.shutdown()


async def test_off_no_exemplar_and_the_text_format_unchanged(gateway: Gateway, worker: Worker) -> None:
    assert not tracing.enabled()
    async with aiohttp.ClientSession() as session:
        await _infer(session, gateway.url, f"00-{SAMPLED}-00f067aa0ba902b7-01")
        content_type, text = await _scrape(session, gateway.url, PROMETHEUS_ACCEPT)
        assert content_type.startswith("application/openmetrics-text")
        assert 'fleet_gateway_request_duration_seconds_count{model="tiny",version="1"} 1.0' in text
        assert "trace_id" not in text
        content_type, plain = await _scrape(session, gateway.url, None)
        assert content_type == CONTENT_TYPE_LATEST and "# EOF" not in plain
        assert 'fleet_gateway_request_duration_seconds_count{model="tiny",version="1"} 1.0' in plain
        assert plain == gateway.metrics.render().decode()
