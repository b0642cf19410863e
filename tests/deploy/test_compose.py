"""The Compose files validate against the Compose specification's schema (bundled in check-jsonschema), and
the stack they describe hangs together: real settings, scrape targets on the ports the services open,
Grafana provisioned with the dashboard."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.service import WORKER_SD_PATH
from autoscaler.settings import AutoscalerSettings

from .manifests import CHART, DEPLOY, ROOT
from .settings_names import known_variables

COMPOSE = DEPLOY / "compose"
FILES = [COMPOSE / "compose.yaml", COMPOSE / "compose.gpu.yaml"]

pytest.importorskip("check_jsonschema", reason="check-jsonschema (the `dev` extra) holds the Compose schema")


def check_compose_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    return subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, timeout=60)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())  # resolves the `<<: *anchor` merges as Compose does


def test_compose_files_validate_against_the_compose_spec() -> None:
    result = check_compose_schema(*FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text((COMPOSE / "compose.yaml").read_text().replace("stop_grace_period: 45s", "stop_grace: 45s"))
    result = check_compose_schema(bad)
    assert result.returncode == 1 and "stop_grace" in result.stdout


def test_every_fleet_variable_is_a_real_setting() -> None:
    """No typo or renamed setting in the Compose files, the chart or fleet.env.example."""
    used: set[str] = set()
    for path in FILES:
        for service in load(path)["services"].values():
            used.update(k for k in service.get("environment", {}) if k.startswith("FLEET_"))
    texts = [t.read_text() for t in (CHART / "templates").glob("*.yaml")]
    texts += [(CHART / "values.yaml").read_text(), (DEPLOY / "fleet.env.example").read_text()]
    texts += [(DEPLOY / "README.md").read_text()]
    for text in texts:  # names ending in "_" are prefixes in prose (FLEET_WORKER_*)
        used.update(n for n in re.findall(r"FLEET_[A-Z0-9_]+", text) if not n.endswith("_"))
    assert len(used) > 20
    assert used - known_variables() == set()


def test_prometheus_scrapes_every_component_on_the_port_it_serves() -> None:
    services = load(COMPOSE / "compose.yaml")["services"]
    jobs = {job["job_name"]: job for job in yaml.safe_load((COMPOSE / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs["fleet-gateway"]["static_configs"][0]["targets"] == [
        f"gateway:{services['gateway']['environment']['FLEET_GATEWAY_PORT']}"
    ]
    (workers,) = jobs["fleet-worker"]["dns_sd_configs"]
    assert workers["names"] == ["worker"]
    assert str(workers["port"]) == services["worker"]["environment"]["FLEET_WORKER_METRICS_PORT"]
    port = services["autoscaler"]["environment"]["FLEET_AUTOSCALER_METRICS_PORT"]
    assert jobs["fleet-autoscaler"]["static_configs"][0]["targets"] == [f"autoscaler:{port}"]
    # Workers the autoscaler starts get one port each, listed for Prometheus at /sd/workers on its port.
    autoscaler = services["autoscaler"]["environment"]
    settings = AutoscalerSettings.from_env(autoscaler)
    assert settings.worker_metrics_port_range() is not None and settings.worker_metrics_host == "autoscaler"
    (discovery,) = jobs["fleet-autoscaled-worker"]["http_sd_configs"]
    assert discovery["url"] == f"http://autoscaler:{port}{WORKER_SD_PATH}"


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    grafana = load(COMPOSE / "compose.yaml")["services"]["grafana"]
    mounts = {src: target for src, target, *_ in (v.split(":") for v in grafana["volumes"])}
    dashboard_target = mounts["../grafana/inference-fleet.json"]
    assert (COMPOSE / "../grafana/inference-fleet.json").resolve() == DEPLOY / "grafana" / "inference-fleet.json"
    provisioning = COMPOSE / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "fleet.yaml").read_text())["providers"]
    assert dashboard_target.startswith(provider["options"]["path"] + "/")
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"


def test_builds_name_existing_dockerfiles() -> None:
    for path in FILES:
        for name, service in load(path)["services"].items():
            build = service.get("build")
            if build:
                context = (path.parent / build["context"]).resolve()
                assert context == ROOT, name
                assert (context / build["dockerfile"]).is_file(), name
