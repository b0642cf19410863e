"""Exemplars from scrape to trace: Compose's Prometheus stores them, the dashboard's latency panels ask for them,
and Grafana's Prometheus data source links their ``trace_id`` to a Tempo data source whose address is set by
``TEMPO_URL``."""

from __future__ import annotations

import json
import re

import yaml

from .manifests import DEPLOY
from .test_compose import COMPOSE, load

PROVISIONING = COMPOSE / "grafana" / "provisioning" / "datasources"


def test_prometheus_keeps_exemplars() -> None:
    command = load(COMPOSE / "compose.yaml")["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command


def test_every_latency_histogram_query_shows_exemplars() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "inference-fleet.json").read_text())
    targets = [t for panel in dashboard["panels"] for t in panel.get("targets", [])]
    latency = [t for t in targets if re.search(r"_request_duration_seconds_bucket\b", t["expr"])]
    assert len(latency) >= 6  # gateway end to end, by version, worker created-to-delivered
    assert all(t.get("exemplar") is True for t in latency)


def test_trace_ids_link_to_the_tempo_data_source() -> None:
    (prometheus,) = yaml.safe_load((PROVISIONING / "prometheus.yaml").read_text())["datasources"]
    (tempo,) = yaml.safe_load((PROVISIONING / "tempo.yaml").read_text())["datasources"]
    (link,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert link["name"] == "trace_id" and link["datasourceUid"] == tempo["uid"]
    assert tempo["type"] == "tempo" and tempo["url"] == "${TEMPO_URL}"  # Grafana expands it from its environment
    grafana = load(COMPOSE / "compose.yaml", TEMPO_URL="http://traces:3200")["services"]["grafana"]
    assert grafana["environment"]["TEMPO_URL"] == "http://traces:3200"
    assert load(COMPOSE / "compose.yaml")["services"]["grafana"]["environment"]["TEMPO_URL"] == "http://tempo:3200"
