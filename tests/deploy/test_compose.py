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

from autoscaler.__main__ import inherited_worker_env
from autoscaler.service import WORKER_SD_PATH
from autoscaler.settings import AutoscalerSettings
from gateway import GatewaySettings
from workers import WorkerSettings

from .manifests import CHART, DEPLOY, ROOT
from .settings_names import known_variables

COMPOSE = DEPLOY / "compose"
FILES = [COMPOSE / "compose.yaml", COMPOSE / "compose.gpu.yaml"]

pytest.importorskip("check_jsonschema", reason="check-jsonschema (the `dev` extra) holds the Compose schema")


def check_compose_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    return subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, timeout=60)


_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """``${NAME:-default}`` replaced as Compose does from ``variables`` (the shell's), recursively."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    return value


def load(path: Path, **variables: str) -> dict[str, Any]:
    """The file as Compose reads it: `<<: *anchor` merges resolved, variables interpolated."""
    data: dict[str, Any] = interpolate(yaml.safe_load(path.read_text()), variables)
    return data


def service_env(name: str, *files: Path, **variables: str) -> dict[str, str]:
    """A service's environment with the override files merged over it (Compose merges the maps key by key)."""
    env: dict[str, str] = {}
    for path in files or (COMPOSE / "compose.yaml",):
        env.update(load(path, **variables)["services"].get(name, {}).get("environment", {}))
    return {k: str(v) for k, v in env.items()}


def test_compose_files_validate_against_the_compose_spec() -> None:
    result = check_compose_schema(*FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text((COMPOSE / "compose.yaml").read_text().replace("stop_grace_period: 45s", "stop_grace: 45s"))
    result = check_compose_schema(bad)
    assert result.returncode == 1 and "stop_grace" in result.stdout


def test_every_fleet_variable_is_a_real_setting() -> None:
    """No typo or renamed setting in the Compose files, the chart, the plain manifests or fleet.env.example."""
    used: set[str] = set()
    for path in FILES:
        for service in load(path)["services"].values():
            used.update(k for k in service.get("environment", {}) if k.startswith("FLEET_"))
    texts = [t.read_text() for t in (CHART / "templates").glob("*.yaml")]
    texts += [(CHART / "values.yaml").read_text(), (DEPLOY / "fleet.env.example").read_text()]
    texts += [(DEPLOY / "README.md").read_text()]
    texts += [t.read_text() for t in (DEPLOY / "kubernetes").rglob("*.yaml")]
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
    settings = AutoscalerSettings.from_env(service_env("autoscaler"))
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


def test_compose_runs_a_fixed_pool_that_the_placement_scheduler_serves() -> None:
    services = load(COMPOSE / "compose.yaml")["services"]
    assert "profiles" not in services["autoscaler"]  # the pool workers serve nothing without its placement
    assert services["worker"]["deploy"]["replicas"] == "2"  # POOL_WORKERS
    assert load(COMPOSE / "compose.yaml", POOL_WORKERS="0")["services"]["worker"]["deploy"]["replicas"] == "0"
    worker = WorkerSettings.from_env(service_env("worker"))
    assert worker.mode == "pool" and worker.follow_assignment and worker.models == ()
    scaler = AutoscalerSettings.from_env(service_env("autoscaler"))
    assert scaler.placement and not scaler.pool and scaler.models == ()  # places every model, starts nothing
    assert scaler.min_replicas >= 1


def test_pool_autoscale_sizes_the_pool_with_workers_like_the_fixed_ones() -> None:
    scaler = AutoscalerSettings.from_env(service_env("autoscaler", POOL_AUTOSCALE="true"))
    assert scaler.pool and scaler.backend == "local" and scaler.pool_min_workers <= scaler.pool_max_workers
    # What it starts inherits its FLEET_WORKER_* (autoscaler.__main__): the same pool workers as the service.
    inherited = {k: v for k, v in inherited_worker_env(service_env("autoscaler")).items() if "_WORKER_" in k}
    fixed = {k: v for k, v in service_env("worker").items() if k.startswith("FLEET_WORKER_")}
    assert {k: v for k, v in fixed.items() if k != "FLEET_WORKER_METRICS_PORT"} == inherited
    worker = WorkerSettings.from_env(service_env("worker"))
    room = worker.memory_budget_mb * (1 + worker.overcommit_pct / 100)
    assert scaler.pool_worker_memory_mb == pytest.approx(room, abs=1)


def test_gpu_pool_workers_budget_their_gpu() -> None:
    worker = WorkerSettings.from_env(service_env("worker", *FILES))
    assert (worker.device, worker.mode, worker.memory_budget_mb) == ("cuda", "pool", 0)
    scaler = AutoscalerSettings.from_env(service_env("autoscaler", *FILES, POOL_AUTOSCALE="true"))
    assert scaler.gpus == -1 and scaler.pool_worker_memory_mb == 0
    assert inherited_worker_env(service_env("autoscaler", *FILES))["FLEET_WORKER_MEMORY_BUDGET_MB"] == "0"


def test_gateway_publishes_its_grpc_port() -> None:
    gateway = load(COMPOSE / "compose.yaml")["services"]["gateway"]
    settings = GatewaySettings.from_env(service_env("gateway"))
    assert settings.grpc_port == 8001 and f"{settings.grpc_port}:{settings.grpc_port}" in gateway["ports"]
