"""docs/configuration.md is generated from the settings objects and must match them."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.cli import main
from fleet.cli.config_docs import render_markdown

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"


def test_configuration_reference_is_current() -> None:
    assert PAGE.read_text() == render_markdown(), (
        "docs/configuration.md is stale: regenerate it with `fleet config --markdown > docs/configuration.md`"
    )


def test_reference_lists_every_setting_of_every_service() -> None:
    page = render_markdown()
    for variable in ("FLEET_GATEWAY_JOB_TTL_S", "FLEET_WORKER_MODELS", "FLEET_AUTOSCALER_LEADER_LEASE_S",
                     "FLEET_KAFKA_BOOTSTRAP", "FLEET_REDIS_URL", "FLEET_NAMESPACE", "FLEET_API_KEY"):  # fmt: skip
        assert f"| `{variable}` |" in page
    assert page.count("| `FLEET_KAFKA_BOOTSTRAP` |") == 1, "shared settings are listed once, not per service"


def test_fleet_config_markdown_prints_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown()
