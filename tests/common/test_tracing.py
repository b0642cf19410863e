"""common.tracing with tracing off (the default): nothing is wrapped, added or made; the settings' checks."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from common import tracing
from schemas import SettingsError, load
from schemas.settings import FleetSettings, TracingSettings


class Untouchable:
    """Fails the test when tracing (off) reads anything of it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"tracing is off but read .{name}")


async def handler(request: Any) -> str:
    return "answer"


def test_off_adds_nothing_to_a_request_path() -> None:
    assert not tracing.enabled()
    assert tracing.traced_http(handler) is handler  # the route is registered unwrapped
    assert tracing.grpc_span("ModelInfer", Untouchable(), "m", "1") is tracing.NOOP
    headers = [("fleet-request-id", b"r1")]
    tracing.inject(headers)
    assert headers == [("fleet-request-id", b"r1")]
    tracing.batch_ran([Untouchable()], "w1", 0.0, 0.001)
    tracing.delivered([Untouchable()], "m", 1.0)
    assert not tracing.configure(TracingSettings(), "x") and not tracing.enabled()


def test_off_the_services_never_load_the_sdk() -> None:
    """No span can be made: the SDK's tracer, the exporter and the propagator are never even imported (other
    libraries, redis-py among them, may import OpenTelemetry's API for their own use)."""
    code = (
        "import sys, gateway.__main__, workers.__main__\n"
        "from common import tracing\n"
        "from schemas.settings import TracingSettings\n"
        "with tracing.configured(TracingSettings(), 'x') as on:\n"
        "    assert not on\n"
        "ours = ('opentelemetry.sdk.trace', 'opentelemetry.exporter', 'opentelemetry.trace.propagation.tracecontext')\n"
        "print(sorted(m for m in sys.modules if m.startswith(ours)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("https://c.example/", "https://c.example/v1/traces"),
        ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
    ],
)
def test_traces_url(endpoint: str, url: str) -> None:
    assert tracing.traces_url(endpoint) == url


def test_settings_read_from_the_environment_and_checked() -> None:
    env = {"FLEET_TRACING_OTLP_ENDPOINT": "http://c:4318", "FLEET_TRACING_SAMPLE_RATIO": "0.25"}
    settings = load(FleetSettings, env, "").tracing
    assert settings.enabled and settings.sample_ratio == 0.25 and settings.export_delay_ms == 1000
    assert not load(FleetSettings, {}, "").tracing.enabled
    for bad in (
        {"FLEET_TRACING_OTLP_ENDPOINT": "c:4318"},
        {"FLEET_TRACING_SAMPLE_RATIO": "2"},
        {"FLEET_TRACING_EXPORT_DELAY_MS": "0"},
        {"FLEET_TRACING_ENDPOINT": "http://c"},  # a typo is an error, not tracing silently off
    ):
        with pytest.raises(SettingsError):
            load(FleetSettings, bad, "")
