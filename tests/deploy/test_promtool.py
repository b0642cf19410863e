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

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas import FleetSettings, Names

from .live_fleet import SERVICES, scrape_live_services
from .manifests import ROOT


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


@pytest.mark.integration
async def test_expositions_pass_promtool_and_the_parser(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    expositions = await scrape_live_services(fleet_settings, names, redis_client, tmp_path)
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
