"""OpenTelemetry traces end to end: a trace followed from the gateway (HTTP and gRPC, continued from a W3C
``traceparent`` or started there) through Kafka into a ``python -m workers`` process, every span received by an
OTLP/HTTP receiver in the test; with tracing off, no trace header goes on the record and nothing is exported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from common import tracing
from gateway import Gateway, GatewaySettings
from schemas import FleetSettings, ModelRecord, Names
from schemas.oip_grpc import method_path, pb
from schemas.settings import TracingSettings
from tests.integration.conftest import WorkerProcess, wait_worker_ready

pytestmark = pytest.mark.integration

X = np.ones((1, 16), np.float32)
WORKER_SPANS = {"fleet.worker.queued", "fleet.worker.model_run", "fleet.worker.deliver"}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    links: list[str]  # trace ids linked to


@dataclass
class Receiver:
    """An in-process OTLP/HTTP (protobuf) traces endpoint that keeps every span it is sent."""

    url: str = ""
    spans: list[Span] = field(default_factory=list)

    async def export(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in message.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    links = [link.trace_id.hex() for link in s.links]
                    span = Span(
                        service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), attributes, links
                    )
                    self.spans.append(span)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    collector = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", collector.export)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    collector.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield collector
    await runner.cleanup()


@pytest.fixture
def traced(receiver: Receiver) -> Iterator[None]:
    """Tracing on in this process (the in-process gateway) for the test, exporting to ``receiver``."""
    assert tracing.configure(TracingSettings(otlp_endpoint=receiver.url, export_delay_ms=50), "fleet-gateway")
    try:
        yield
    finally:
        tracing.shutdown()


async def _spans_of(receiver: Receiver, trace_id: str, timeout_s: float = 30.0) -> list[Span]:
    """The trace's spans once the gateway's and the worker's three are in (AssertionError after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = receiver.trace(trace_id)
        if WORKER_SPANS <= {s.name for s in spans if s.service == "fleet-worker"} and any(
            s.service == "fleet-gateway" for s in spans
        ):
            return spans
        await asyncio.sleep(0.05)
    raise AssertionError(f"trace {trace_id} incomplete: {receiver.trace(trace_id)}")


async def _http_infer(url: str, traceparent: str | None) -> int:
    """One JSON infer of ``tiny`` with that ``traceparent`` header (none when None); the HTTP status."""
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": X.ravel().tolist()}]}
    headers = {"traceparent": traceparent} if traceparent else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v2/models/tiny/infer", json=body, headers=headers) as response:
            await response.read()
            return response.status


def _check_trace(spans: list[Span], parent_id: str, name: str) -> Span:
    """The gateway's SERVER span is the child of ``parent_id`` ("" for a new trace); the worker's join it."""
    (server,) = [s for s in spans if s.service == "fleet-gateway"]
    assert (server.name, server.parent_id) == (name, parent_id)
    assert server.attributes["fleet.model"] == "tiny"
    worker = [s for s in spans if s.service == "fleet-worker"]
    assert sorted(s.name for s in worker) == sorted(WORKER_SPANS)
    assert {s.parent_id for s in worker} == {server.span_id}
    return server


async def test_a_trace_crosses_gateway_kafka_and_worker(
    traced: None,
    receiver: Receiver,
    fleet_settings: FleetSettings,
    tiny_model: ModelRecord,
    redis_client: Any,
    names: Names,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker = worker_factory(FLEET_TRACING_OTLP_ENDPOINT=receiver.url, FLEET_TRACING_EXPORT_DELAY_MS="50")
    async with Gateway(GatewaySettings(fleet=fleet_settings, port=0, default_timeout_s=20)) as gateway:
        await asyncio.gather(gateway.wait_ready(), wait_worker_ready(redis_client, names, worker))
        http_trace, grpc_trace = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"
        parent = "00f067aa0ba902b7"
        assert await _http_infer(gateway.url, f"00-{http_trace}-{parent}-01") == 200
        assert await _http_infer(gateway.url, None) == 200
        request = pb.ModelInferRequest(model_name="tiny", id="traced-grpc")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(X.tobytes())
        assert gateway.grpc_target is not None
        async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
            call = channel.unary_unary(
                method_path("ModelInfer"),
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            await call(request, timeout=20, metadata=(("traceparent", f"00-{grpc_trace}-{parent}-01"),))

        over_http = await _spans_of(receiver, http_trace)
        _check_trace(over_http, parent, "POST /v2/models/{model}/infer")
        (run,) = [s for s in over_http if s.name == "fleet.worker.model_run"]
        assert len(run.attributes["fleet.batch.request_ids"]) == run.attributes["fleet.batch.size"] >= 1
        assert run.attributes["fleet.model"] == "tiny"
        _check_trace(await _spans_of(receiver, grpc_trace), parent, "inference.GRPCInferenceService/ModelInfer")
        # Without a traceparent the gateway starts the trace, and the worker joins that one.
        known = (http_trace, grpc_trace)
        started = [s for s in receiver.spans if s.service == "fleet-gateway" and s.trace_id not in known]
        assert len(started) == 1
        _check_trace(await _spans_of(receiver, started[0].trace_id), "", "POST /v2/models/{model}/infer")


async def test_off_no_header_and_nothing_exported(
    receiver: Receiver, fleet_settings: FleetSettings, names: Names, gateway: Gateway, worker: Any
) -> None:
    assert not tracing.enabled()
    assert await _http_infer(gateway.url, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == 200
    consumer = AIOKafkaConsumer(
        names.request_topic("tiny"), bootstrap_servers=fleet_settings.kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            record = await consumer.getone()  # the one request published
    finally:
        await consumer.stop()
    assert {key for key, _ in record.headers} == {"fleet-request-id", "fleet-v"}
    assert receiver.spans == []
