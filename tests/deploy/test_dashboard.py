"""The Grafana dashboard queries only metrics the services really export: a real gateway, worker and
autoscaler run against the session's broker and Redis (`live_fleet`), requests go through, and their /metrics
answers are compared with every metric name in the dashboard's PromQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas import FleetSettings, Names

from .live_fleet import scrape_live_services
from .manifests import DEPLOY
from .promql import exposed_series, metric_names

DASHBOARD = DEPLOY / "grafana" / "inference-fleet.json"


def dashboard_queries(node: Any) -> list[str]:
    """Every PromQL text of a dashboard: panel targets (nested rows too) and query variables."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                found.append(value["query"])
            else:
                found.extend(dashboard_queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(dashboard_queries(item))
    return found


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (model) (rate(fleet_gateway_request_success_total{model=~"$model"}[1m]))',
         {"fleet_gateway_request_success_total"}),
        ("histogram_quantile(0.95, sum by (le, model) (rate(a_seconds_bucket{code!=\"x\"}[5m])))",
         {"a_seconds_bucket"}),
        ("sum(rate(a_sum[1m])) / sum(rate(a_count[1m])) > bool 0.5 and on (model) b",
         {"a_sum", "a_count", "b"}),
        ('max_over_time(up{job="fleet-worker"}[5m:30s]) offset 1h', {"up"}),
        ("label_values(fleet_x_count, model)", {"fleet_x_count"}),
        ('count without (instance) (c{l="by (x)"}) unless ignoring (code) d', {"c", "d"}),
    ],
)  # fmt: skip
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_exposed_series_from_type_lines() -> None:
    # prometheus_client's 0.0.4 format types a counter as x_total; OpenMetrics as x.
    lines = ["# HELP a_total x", "# TYPE a_total counter", "# TYPE b counter", "# TYPE h histogram"]
    lines += ["# TYPE g gauge", 'h_bucket{le="1.0"} 1.0', "g 2.0"]
    text = "\n".join(lines)
    assert exposed_series(text) == {
        "a_total", "a_created", "b_total", "b_created", "h_bucket", "h_sum", "h_count", "h_created", "g"
    }  # fmt: skip


def test_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "inference-fleet"
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 20
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.integration
async def test_dashboard_uses_only_exported_metrics(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    expositions = await scrape_live_services(fleet_settings, names, redis_client, tmp_path)
    exposed = {service: exposed_series(text) for service, text in expositions.items()}
    assert "fleet_gateway_request_success_total" in exposed["gateway"]
    assert "fleet_worker_inference_count_total" in exposed["worker"]

    everything = set().union(*exposed.values())
    used = set().union(*(metric_names(q) for q in dashboard_queries(json.loads(DASHBOARD.read_text()))))
    assert used - everything == set(), "the dashboard queries metrics no service exports"
    # Each service has panels.
    for service, series in exposed.items():
        assert used & series, f"no panel shows the {service}"


def test_dashboard_compares_versions() -> None:
    """Rollouts: gateway rate, errors and latency by the answering version (canary vs baseline)."""
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    by_version = [q for q in queries if "version)" in q and "fleet_gateway_request" in q]
    for metric in (
        "fleet_gateway_request_success_total",
        "fleet_gateway_request_failure_total",
        "fleet_gateway_request_duration_seconds_bucket",
    ):
        assert any(metric in q for q in by_version), metric
