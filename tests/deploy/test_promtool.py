"""Every service's /metrics passes ``promtool check metrics`` (lint included) and prometheus_client's parser.

A real gateway, worker and autoscaler run against the session's broker and Redis, one request goes
through (so per-model series carry samples), and each exposition is piped through promtool, from the
Debian package ``prometheus`` (``scripts/promtool.sh`` puts it at ``.cache/bin/promtool``; ``FLEET_PROMTOOL``
or ``PATH`` work too). Without promtool the promtool check skips, saying so; the parser check always runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoscaler import AutoscalerService, AutoscalerSettings
from fleet.artifacts import build_record
from fleet.localservers import free_port
from fleet.modelgen import tiny_mlp
from gateway import Gateway, GatewaySettings
from schemas import BatchingConfig, FleetSettings, ModelRegistry, Names
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings

from .manifests import ROOT

SERVICES = ("gateway", "worker", "autoscaler")


def promtool() -> str | None:
    """Path of a working promtool, or None."""
    for candidate in (os.environ.get("FLEET_PROMTOOL"), str(ROOT / ".cache" / "bin" / "promtool"), "promtool"):
        if not candidate:
            continue
        found = shutil.which(candidate)
        if found is not None:
            return found
    return None


def promtool_problems(tool: str, exposition: str) -> str:
    """What ``promtool check metrics`` reports about ``exposition`` (empty when it is clean)."""
    done = subprocess.run([tool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60)
    report = (done.stdout + done.stderr).strip()
    if done.returncode != 0 and not report:
        report = f"promtool exited {done.returncode}"
    return report


def parser_problems(exposition: str) -> list[str]:
    """Families without HELP, counters whose samples are not ``_total``/``_created``, or a parse failure."""
    problems: list[str] = []
    try:
        families = list(text_string_to_metric_families(exposition))
    except ValueError as exc:
        return [f"does not parse: {exc}"]
    for family in families:
        if not family.documentation:
            problems.append(f"{family.name}: no HELP")
        if family.type == "counter":
            bad = [s.name for s in family.samples if not s.name.endswith(("_total", "_created"))]
            if bad:
                problems.append(f"{family.name}: counter samples {bad}")
        if family.type == "untyped":
            problems.append(f"{family.name}: untyped")
    return problems


def test_promtool_reports_a_bad_exposition() -> None:
    """The check can fail: promtool (when present) and the parser both flag a counter without _total or HELP."""
    bad = "# TYPE requests counter\nrequests 1\n"
    assert parser_problems(bad) != []
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not found (run scripts/promtool.sh: it unpacks Debian's prometheus package)")
    assert promtool_problems(tool, bad)
    assert promtool_problems(tool, "# HELP ok_total Fine.\n# TYPE ok_total counter\nok_total 1\n") == ""


async def _scrape_all(fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path) -> dict[str, str]:
    record = build_record(
        "tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"), batching=BatchingConfig(max_batch_size=8, max_queue_delay_ms=2)
    )
    await ModelRegistry(redis_client, names).register(record)
    await ensure_model_topics(fleet_settings.kafka, names, "tiny", partitions=1)
    worker_port, autoscaler_port = free_port(), free_port()
    worker_settings = WorkerSettings(
        models=("tiny",), fleet=fleet_settings, metrics_port=worker_port, device="cpu", drain_timeout_s=5
    )
    autoscaler_settings = AutoscalerSettings(
        interval_s=0.2, metrics_port=autoscaler_port, gpus=0, log_dir=str(tmp_path), pinned=("tiny=0",),
        fleet=fleet_settings,
    )  # fmt: skip
    gateway_settings = GatewaySettings(port=0, fleet=fleet_settings, default_timeout_s=20.0)
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.5] * 3}]}
    async with (
        Worker(worker_settings) as worker,
        Gateway(gateway_settings, names=names) as gateway,
        AutoscalerService(autoscaler_settings),
        aiohttp.ClientSession() as http,
    ):
        await worker.wait_ready(30)
        # A success and a failure, so labelled series of both kinds carry samples.
        async with http.post(f"{gateway.url}/v2/models/tiny/infer", json=body) as response:
            assert response.status == 200, await response.text()
        async with http.post(f"{gateway.url}/v2/models/tiny/infer", json=bad) as response:
            assert response.status == 400, await response.text()
        urls = {
            "gateway": f"{gateway.url}/metrics",
            "worker": f"http://127.0.0.1:{worker_port}/metrics",
            "autoscaler": f"http://127.0.0.1:{autoscaler_port}/metrics",
        }
        out: dict[str, str] = {}
        for service, url in urls.items():
            async with http.get(url) as response:
                assert response.status == 200, url
                out[service] = await response.text()
    return out


@pytest.mark.integration
async def test_expositions_pass_promtool_and_the_parser(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    expositions = await _scrape_all(fleet_settings, names, redis_client, tmp_path)
    assert 'fleet_gateway_request_success_total{model="tiny"' in expositions["gateway"]
    assert "fleet_worker_inference_count_total{" in expositions["worker"]
    for service in SERVICES:
        assert parser_problems(expositions[service]) == [], service
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not found (run scripts/promtool.sh: it unpacks Debian's prometheus package)")
    reports = {service: promtool_problems(tool, expositions[service]) for service in SERVICES}
    assert reports == dict.fromkeys(SERVICES, ""), reports


def test_compose_prometheus_config_passes_promtool() -> None:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not found (bash scripts/promtool.sh installs it)")
    config = ROOT / "deploy" / "compose" / "prometheus.yml"
    done = subprocess.run([tool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
