"""OpenTelemetry traces across gateway, Kafka and worker: the glue both services call, a few lines each.

Off by default (``FLEET_TRACING_OTLP_ENDPOINT`` empty): then nothing of OpenTelemetry is imported, every
function here returns at its first line and no span object is ever made; the gateway's HTTP infer handler is
not even wrapped (``traced_http`` returns it as it is). On (:func:`configured` at a service's entry point):

- the gateway continues the W3C ``traceparent`` of an HTTP infer request or a gRPC ModelInfer (metadata), or
  starts a trace, in a SERVER span around the request (:func:`traced_http`, :func:`grpc_span`);
- the publisher adds that span's context to the request's Kafka record (``traceparent``/``tracestate``
  headers, :func:`inject`); a pipeline request carries the span's ``traceparent`` (:func:`traceparent`) and
  every later step's record gets it, so each step's worker spans join the same trace;
- the latency histograms of both services carry, on each observation of a sampled traced request, its trace id
  as an exemplar (:func:`exemplar`, :func:`exemplars`; shown in the OpenMetrics format of ``/metrics``);
- the worker makes, in each request's trace (children of the gateway's span): ``fleet.worker.queued`` (from the
  gateway's acceptance to the model run), ``fleet.worker.model_run`` (the batch's run: size, the request ids of
  the batch, links to the other requests' traces) and ``fleet.worker.deliver`` (from the end of the run until
  the round's replies, dead letters and retries are stored) (:func:`batch_ran`, :func:`delivered`).

Spans are batched and exported over OTLP/HTTP (protobuf) by a background thread of the SDK, flushed when the
service stops. The SDK's provider is private to this module (the global OpenTelemetry provider is left alone).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableSequence, Sequence
from typing import Any, Protocol, TypeVar

from schemas import InferenceRequest
from schemas.constants import HEADER_TRACEPARENT, HEADER_TRACESTATE
from schemas.settings import TracingSettings

log = logging.getLogger("fleet.tracing")

T = TypeVar("T")
#: What every span function returns when tracing is off: one shared context manager that does nothing.
NOOP: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
#: Most links a model-run span carries to the other requests of its batch (their ids are all in an attribute).
MAX_BATCH_LINKS = 32
#: Most records a worker remembers the end of the model run of, waiting for their round's delivery.
MAX_PENDING = 100_000
#: Headers of a Kafka record that carry its W3C trace context.
TRACE_HEADERS = (HEADER_TRACEPARENT, HEADER_TRACESTATE)


def trace_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> tuple[tuple[str, bytes], ...]:
    """The trace context (``traceparent``, ``tracestate``) among a Kafka record's ``headers``; () when none (pure:
    no OpenTelemetry import)."""
    return tuple((key, bytes(value)) for key, value in headers or () if key in TRACE_HEADERS and value)


class Fetched(Protocol):
    """A worker's fetched record (``workers.handler.Fetched``): the Kafka record and its decoded request."""

    @property
    def record(self) -> Any: ...  # aiokafka ConsumerRecord

    @property
    def request(self) -> InferenceRequest | None: ...


class _Tracer:
    """The SDK objects of a service with tracing on (only built then: the imports happen here)."""

    def __init__(self, settings: TracingSettings, service: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode, get_current_span, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.Link, self.SpanKind, self.Status, self.StatusCode = Link, SpanKind, Status, StatusCode
        self.current_span, self.in_context = get_current_span, set_span_in_context
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        exporter = OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint))
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=settings.export_delay_ms))
        self.tracer = self.provider.get_tracer("inference-fleet")
        self.propagator = TraceContextTextMapPropagator()
        #: When each traced record's model run ended (epoch ms), until its round is delivered (insertion order:
        #: the oldest are dropped past MAX_PENDING, e.g. records of rounds cancelled before delivery).
        self.ran: dict[tuple[str, int, int], float] = {}

    def ran_until(self, record: Any, ended_ms: float) -> None:
        """Remember when ``record``'s model run ended (the start of its deliver span)."""
        if len(self.ran) >= MAX_PENDING:
            del self.ran[next(iter(self.ran))]
        self.ran[_key(record)] = ended_ms

    def parent(self, record: Any) -> Any:
        """The context a Kafka record's trace headers carry; None when it has none."""
        carrier = {key: value.decode("latin-1") for key, value in trace_headers(record.headers)}
        if HEADER_TRACEPARENT not in carrier:
            return None
        context = self.propagator.extract(carrier)
        return context if self.current_span(context).get_span_context().is_valid else None

    def span(self, name: str, parent: Any, start_ms: float, end_ms: float, **kw: Any) -> None:
        """One finished span of ``parent``'s trace from ``start_ms`` to ``end_ms`` (epoch milliseconds)."""
        span = self.tracer.start_span(name, context=parent, start_time=_ns(start_ms), **kw)
        span.end(end_time=_ns(max(start_ms, end_ms)))


_active: _Tracer | None = None


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector address (``/v1/traces`` added unless it is there)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def enabled() -> bool:
    """True while tracing is configured on."""
    return _active is not None


def configure(settings: TracingSettings, service: str) -> bool:
    """Turn tracing on for this process as ``service`` when ``settings`` name an endpoint; True when on.

    Call it before the service starts (the gateway decides when it registers its routes whether to trace them).
    """
    global _active
    if not settings.enabled:
        return False
    if _active is not None:
        raise RuntimeError("tracing is configured already; shutdown() first")
    _active = _Tracer(settings, service)
    log.info("tracing on", extra={"endpoint": traces_url(settings.otlp_endpoint), "service": service})
    return True


def shutdown() -> None:
    """Export the spans still buffered and turn tracing off; idempotent."""
    global _active
    tracer, _active = _active, None
    if tracer is not None:
        tracer.provider.shutdown()


@contextlib.contextmanager
def configured(settings: TracingSettings, service: str) -> Iterator[bool]:
    """:func:`configure` for the block, then :func:`shutdown` (for entry points); yields whether it is on."""
    on = configure(settings, service)
    try:
        yield on
    finally:
        if on:
            shutdown()


# gateway ---------------------------------------------------------------------------------------------------------
def traced_http(handler: Callable[[Any], Awaitable[T]]) -> Callable[[Any], Awaitable[T]]:
    """An aiohttp handler in a SERVER span that continues the request's ``traceparent``; ``handler`` itself when
    tracing is off (decided now: nothing is added to a request's path)."""
    tracer = _active
    if tracer is None:
        return handler

    async def traced(request: Any) -> T:
        route = request.match_info.route.resource
        name = f"{request.method} {route.canonical if route is not None else request.path}"
        with tracer.tracer.start_as_current_span(
            name,
            context=tracer.propagator.extract(request.headers),
            kind=tracer.SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path},
        ) as span:
            _model_attributes(span, request.match_info.get("model"), request.match_info.get("version"))
            try:
                response = await handler(request)
            except Exception as exc:
                _failed(span, exc)
                raise
            span.set_attribute("http.response.status_code", getattr(response, "status", 0))
            return response

    return traced


def grpc_span(method: str, context: Any, model: str, version: str) -> contextlib.AbstractContextManager[Any]:
    """A SERVER span for one gRPC request that continues the ``traceparent`` of the call's metadata (NOOP when
    off). Errors are recorded by the caller's exception, as they leave the block."""
    tracer = _active
    if tracer is None:
        return NOOP
    return _grpc_span(tracer, method, context, model, version)


@contextlib.contextmanager
def _grpc_span(tracer: _Tracer, method: str, context: Any, model: str, version: str) -> Iterator[Any]:
    carrier = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    with tracer.tracer.start_as_current_span(
        f"inference.GRPCInferenceService/{method}",
        context=tracer.propagator.extract(carrier),
        kind=tracer.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": method},
    ) as span:
        _model_attributes(span, model, version)
        try:
            yield span
        except Exception as exc:
            _failed(span, exc)
            raise


def inject(headers: MutableSequence[tuple[str, bytes]]) -> None:
    """Append the current span's W3C trace context to a Kafka record's ``headers`` (nothing when off or when no
    span is current)."""
    tracer = _active
    if tracer is None:
        return
    carrier: dict[str, str] = {}
    tracer.propagator.inject(carrier)
    headers.extend((key, value.encode("latin-1")) for key, value in carrier.items())


def traceparent() -> str:
    """The current span's W3C ``traceparent`` ("" when off or when no span is current): a pipeline request
    carries it so that every step's record joins the caller's trace (`workers.steps`)."""
    tracer = _active
    if tracer is None:
        return ""
    carrier: dict[str, str] = {}
    tracer.propagator.inject(carrier)
    return carrier.get(HEADER_TRACEPARENT, "")


def exemplar() -> dict[str, str] | None:
    """The current span's trace id as a metrics exemplar (``{"trace_id": 32 hex digits}``) when the span is
    sampled; None when tracing is off or no sampled span is current."""
    tracer = _active
    if tracer is None:
        return None
    return _exemplar(tracer.current_span().get_span_context())


def _model_attributes(span: Any, model: str | None, version: str | None) -> None:
    if model:
        span.set_attribute("fleet.model", model)
    if version:
        span.set_attribute("fleet.model_version", version)


def _failed(span: Any, exc: Exception) -> None:
    code = getattr(exc, "code", None)
    if code is not None:
        span.set_attribute("fleet.error_code", str(getattr(code, "value", code)))
    tracer = _active
    if tracer is not None:
        span.set_status(tracer.Status(tracer.StatusCode.ERROR, str(exc)))


# worker ----------------------------------------------------------------------------------------------------------
def batch_ran(items: Sequence[Fetched], worker_id: str, started_ms: float, compute_s: float) -> None:
    """The queued and model-run spans of each traced request of a batch that ran (``items``: each request with
    its Kafka record). Nothing when off."""
    tracer = _active
    if tracer is None:
        return
    requests = [item.request for item in items if item.request is not None]
    if len(requests) != len(items):
        return
    parents = [tracer.parent(item.record) for item in items]
    if not any(parents):
        return
    contexts = [tracer.current_span(p).get_span_context() if p is not None else None for p in parents]
    ids = [request.id for request in requests]
    ended_ms = started_ms + compute_s * 1000.0
    for index, (request, parent) in enumerate(zip(requests, parents, strict=True)):
        if parent is None:
            continue
        attributes: dict[str, Any] = {
            "fleet.request_id": request.id,
            "fleet.model": request.model,
            "fleet.model_version": request.version,
            "fleet.worker_id": worker_id,
            "fleet.attempt": request.attempt,
        }
        tracer.span(
            "fleet.worker.queued",
            parent,
            request.created_ms,
            started_ms,
            kind=tracer.SpanKind.CONSUMER,
            attributes=attributes,
        )
        tracer.ran_until(items[index].record, ended_ms)
        others = [c for i, c in enumerate(contexts) if i != index and c is not None][:MAX_BATCH_LINKS]
        tracer.span(
            "fleet.worker.model_run",
            parent,
            started_ms,
            ended_ms,
            attributes={**attributes, "fleet.batch.size": len(requests), "fleet.batch.request_ids": ids},
            links=[tracer.Link(c, {"fleet.link": "batched with"}) for c in others],
        )


def delivered(items: Sequence[Fetched], model: str, delivered_ms: float) -> None:
    """A ``fleet.worker.deliver`` span in the trace of each traced record of a round whose replies, dead letters
    and retries were stored at ``delivered_ms`` (from the end of its model run; from ``delivered_ms`` for one that
    was answered without a run). Nothing when off."""
    tracer = _active
    if tracer is None:
        return
    for item in items:
        parent = tracer.parent(item.record)
        if parent is not None:
            started_ms = tracer.ran.pop(_key(item.record), delivered_ms)
            attributes = {"fleet.model": model, "messaging.kafka.offset": int(item.record.offset)}
            tracer.span("fleet.worker.deliver", parent, started_ms, delivered_ms, attributes=attributes)


def exemplars(records: Iterable[Any]) -> Sequence[dict[str, str] | None]:
    """The exemplar of each Kafka record (its sampled trace's id, None for a record without one), in order;
    ``()`` when tracing is off (``records`` is not read then)."""
    tracer = _active
    if tracer is None:
        return ()
    found: list[dict[str, str] | None] = []
    for record in records:
        parent = tracer.parent(record)
        found.append(None if parent is None else _exemplar(tracer.current_span(parent).get_span_context()))
    return found


def _exemplar(context: Any) -> dict[str, str] | None:
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return {"trace_id": format(context.trace_id, "032x")}


def _key(record: Any) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


def _ns(epoch_ms: float) -> int:
    return int(epoch_ms * 1_000_000)
