"""``fleet models traffic`` and ``fleet models rollback`` against the session's real Redis, through ``main``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, ModelRegistry, Names
from schemas.traffic import TrafficSplit

from .cli_util import connection_args
from .cli_util import run_fleet as fleet

pytestmark = pytest.mark.integration


@pytest.fixture
async def fleet_args(fleet_settings: FleetSettings, names: Names, tmp_path: Path, redis_client: Any) -> list[str]:
    """Connection flags for the test's namespace, with ``tiny`` versions 1 (default) and 2 registered."""
    registry = ModelRegistry(redis_client, names)
    record = build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx"))
    await registry.register(record)
    await registry.register(replace(record, version="2"))
    return connection_args(fleet_settings, tmp_path / "home")


async def test_traffic_show_set_clear_rollback(
    fleet_args: list[str], redis_client: Any, names: Names, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = ModelRegistry(redis_client, names)
    code, out, _ = await fleet(capsys, "models", "traffic", "tiny", *fleet_args)
    assert code == 0 and "no split; all unversioned traffic goes to the default version 1" in out

    code, out, _ = await fleet(capsys, "models", "traffic", "tiny", "1=90", "2=10", *fleet_args)
    assert code == 0 and "split 1=90 2=10" in out, out
    assert await registry.traffic("tiny") == TrafficSplit.of({"1": 90, "2": 10})
    code, out, _ = await fleet(capsys, "models", "traffic", "tiny", *fleet_args)
    assert out.splitlines() == ["tiny: 1=90 2=10 (default 1)", "  rollback returns to version 1"]

    code, out, _ = await fleet(capsys, "models", "traffic", "tiny", "--clear", *fleet_args)
    assert code == 0 and "split cleared; all unversioned traffic goes to the default version 1" in out
    assert await registry.traffic("tiny") is None

    await fleet(capsys, "models", "traffic", "tiny", "1=0", "2=100", *fleet_args)
    await fleet(capsys, "models", "set-default", "tiny", "2", *fleet_args)
    code, out, _ = await fleet(capsys, "models", "rollback", "tiny", *fleet_args)
    assert code == 0 and "rolled back; default 2 -> 1, split cleared" in out, out
    assert await registry.default_version("tiny") == "1" and await registry.traffic("tiny") is None

    code, _, err = await fleet(capsys, "models", "rollback", "tiny", *fleet_args)
    assert code == 1 and "nothing to roll back" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tiny", "1=90", "2=20"], "must add up to 100, these add up to 110"),
        (["tiny", "1=110", "2=-10"], "whole percentage 0-100, got 110"),
        (["tiny", "1=90", "7=10"], "model 'tiny' has no version '7'"),
        (["tiny", "1=90", "2=ten"], "whole percentage, got 'ten'"),
        (["nope", "1=100"], "unknown model 'nope'"),
        (["tiny", "1=100", "--clear"], "a split or --clear, not both"),
    ],
)
async def test_traffic_rejects(
    fleet_args: list[str], redis_client: Any, names: Names, capsys: pytest.CaptureFixture[str], argv: list[str],
    message: str,
) -> None:  # fmt: skip
    code, _, err = await fleet(capsys, "models", "traffic", *argv, *fleet_args)
    assert code == 1 and message in err and "Traceback" not in err, err
    assert await ModelRegistry(redis_client, names).traffic("tiny") is None
