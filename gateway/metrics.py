"""Prometheus metrics of one gateway, in its own CollectorRegistry (several gateways may share a process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import choose_encoder

from common import tracing

#: Content type of the ``/metrics`` answer in the Prometheus text format.
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The media type a scraper names in its ``Accept`` header to get the OpenMetrics format (with exemplars).
OPENMETRICS_TYPE = "application/openmetrics-text"

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class InFlight:
    """A count of requests in flight: ``inc()``/``dec()`` on the hot path, read by the gauge when scraped."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def inc(self) -> None:
        """One more request in flight."""
        self.count += 1

    def dec(self) -> None:
        """One request fewer in flight."""
        self.count -= 1

    def value(self) -> float:
        """The count, as the gauge reads it."""
        return float(self.count)


class GatewayMetrics:
    """Request counters and a latency histogram per model and version, and the requests in flight.

    ``version`` is the version that answered (the one a traffic split picked for unversioned requests),
    so a canary can be compared with the version it replaces. With tracing on, each latency sample of a sampled
    trace carries its trace id as an exemplar (OpenMetrics format only).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.success = Counter(
            "fleet_gateway_request_success",
            "Infer requests answered with outputs.",
            ["model", "version"],
            registry=self.registry,
        )
        self.failure = Counter(
            "fleet_gateway_request_failure",
            "Infer requests answered with an error, by error code.",
            ["model", "version", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "fleet_gateway_request_duration_seconds",
            "Time from receiving an infer request to answering it.",
            ["model", "version"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        #: Infer requests being handled right now (a plain count read when scraped, not a locked gauge update
        #: on every request).
        self.in_flight = InFlight()
        Gauge(
            "fleet_gateway_requests_in_flight",
            "Infer requests being handled right now.",
            registry=self.registry,
        ).set_function(self.in_flight.value)

        # Children per (model, version), so the hot path skips prometheus_client's locked label lookup.
        self._per_model: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe(self, model: str, seconds: float, code: str | None, version: str = "_unknown") -> None:
        """Record one finished infer request; ``code`` is None on success."""
        key = (model, version)
        children = self._per_model.get(key)
        if children is None:
            children = self._per_model[key] = (self.success.labels(*key), self.duration.labels(*key))
        if code is None:
            children[0].inc()
        else:
            self.failure.labels(model, version, code).inc()
        # The request's span is current here (the handler runs in it); None when tracing is off.
        children[1].observe(seconds, tracing.exemplar())

    def refused(self, model: str, code: str) -> None:
        """Count an infer request the gateway refused before handling it (401, 403, 429): a failure
        with version ``_unknown`` and no duration, so latency histograms stay about served requests."""
        self.failure.labels(model, "_unknown", code).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """Every metric and its content type for a scrape that sent ``accept``: the OpenMetrics format (which has
        the exemplars) when the scraper asks for it, the Prometheus text format otherwise."""
        if OPENMETRICS_TYPE not in accept:
            return self.render(), METRICS_CONTENT_TYPE
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
