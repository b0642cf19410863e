"""``fleet scale`` and ``fleet status --json`` through ``main`` against the session's broker and Redis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autoscaler import Decision, DecisionStore, PinStore
from autoscaler.placement_store import PlacementRunner
from fleet.cli import main
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, ModelRegistry, Names, now_ms
from schemas.limits import MB
from schemas.residency import ResidentModel, WorkerResidency
from schemas.topics import ensure_model_topics

from .cli_util import connection_args
from .cli_util import run_fleet as fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet_args(fleet_settings: FleetSettings, tmp_path: Path, redis_client: Any) -> list[str]:
    """Connection flags for the test's namespace (redis_client cleans its keys afterwards)."""
    return connection_args(fleet_settings, tmp_path / "home", no_gateway=True)


async def test_scale_pins_and_unpins(
    fleet_args: list[str], names: Names, redis_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    store = PinStore(redis_client, names)
    code, out, _ = await fleet(capsys, "scale", "tiny", "--replicas", "3", *fleet_args)
    assert code == 0 and "tiny: pinned to 3 replicas" in out
    assert "not registered" in out
    assert await store.pins() == {"tiny": 3}
    code, out, _ = await fleet(capsys, "scale", "tiny", "--auto", *fleet_args)
    assert code == 0 and "tiny: autoscaled (pin to 3 removed)" in out
    assert await store.pins() == {}
    code, _, err = await fleet(capsys, "scale", "tiny", "--replicas", "-1", *fleet_args)
    assert code == 1 and "--replicas must be >= 0" in err


@pytest.mark.parametrize("argv", [["scale", "m"], ["scale", "m", "--auto", "--replicas", "2"]])
def test_scale_needs_exactly_one_mode(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


async def test_status_json_shows_decisions_pins_and_lag(
    fleet_args: list[str],
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await ModelRegistry(redis_client, names).register(build_record("tiny", "1", tiny_mlp(tmp_path / "t.onnx")))
    await ensure_model_topics(fleet_settings.kafka, names, "tiny", partitions=2)
    inputs = {"lag": 0, "arrival_rate": 2.5, "completion_rate": 2.0}
    await DecisionStore(redis_client, names).publish([Decision("tiny", 1, 2, "because", inputs)])
    await PinStore(redis_client, names).pin("tiny", 2)

    code, out, _ = await fleet(capsys, "status", "--json", *fleet_args)
    assert code == 1  # no gateway answers
    report = json.loads(out)
    assert report["gateway_ready"] is False and report["namespace"] == names.namespace and report["problems"] == []
    (model,) = report["models"]
    assert model["model"] == "tiny" and model["default_version"] == "1"
    assert (model["desired"], model["actual"], model["pinned"], model["reason"]) == (2, 1, 2, "because")
    assert (model["arrival_rate"], model["completion_rate"]) == (2.5, 2.0)
    assert (model["lag"], model["partitions"]) == (0, 2)  # the live snapshot

    code, out, _ = await fleet(capsys, "status", *fleet_args)
    assert code == 1
    assert "NOT READY" in out and "why tiny: because" in out
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("tiny "))
    # The decision's age: seconds since it was published (a slow machine may take a second to get here).
    assert row[:9] == ["tiny", "1", "2", "0", "2.5", "2.0", "2", "1", "2"] and row[10] == "ago"
    assert row[9] in ("0s", "1s", "2s")


async def test_status_shows_each_workers_resident_models(
    fleet_args: list[str], names: Names, redis_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    mb = 1 << 20
    now = now_ms()
    state = WorkerResidency(
        "w1", 50 * mb, 55 * mb, 30 * mb,
        (ResidentModel("old", "1", 10 * mb, now - 9000, now - 8000), ResidentModel("hot", "2", 20 * mb, now, now)),
        now,
    )  # fmt: skip
    await redis_client.zadd(names.workers_key, {"w1": now, "w2": now})  # w2 publishes no residency
    await redis_client.set(names.residency_key("w1"), state.to_bytes())

    code, out, _ = await fleet(capsys, "status", "--json", *fleet_args)
    (shown,) = json.loads(out)["residency"]
    assert shown["worker"] == "w1" and [m["model"] for m in shown["models"]] == ["old", "hot"]
    assert (shown["budget_bytes"], shown["resident_bytes"]) == (50 * mb, 30 * mb)

    code, out, _ = await fleet(capsys, "status", *fleet_args)
    lines = out.splitlines()
    at = lines.index("residency")
    assert lines[at + 1].split() == ["w1", "30.0", "MB", "of", "50.0", "MB", "2", "resident"]
    assert lines[at + 2].split()[:3] == ["hot:2", "20.0", "MB,"]  # most recently used first
    assert lines[at + 3].split() == ["old:1", "10.0", "MB,", "used", "8s", "ago"]


async def test_status_shows_where_each_model_is_placed_or_why_not(
    fleet_args: list[str], names: Names, redis_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = ModelRegistry(redis_client, names)
    artifact = tiny_mlp(tmp_path / "t.onnx")
    for model in ("fits", "huge"):
        await registry.register(build_record(model, "1", artifact))
    await registry.record_measured_size("huge", "1", 900 * MB)
    now = now_ms()
    await redis_client.hset(names.worker_key("w1"), mapping={"state": "ready", "follows": "1", "labels": "cpu"})
    await redis_client.zadd(names.workers_key, {"w1": now})
    await redis_client.set(names.residency_key("w1"), WorkerResidency("w1", 400 * MB, 400 * MB, 0, (), now).to_bytes())
    await PlacementRunner(redis_client, names).run(["fits", "huge"], {})

    code, out, _ = await fleet(capsys, "status", "--json", *fleet_args)
    models = {m["model"]: m for m in json.loads(out)["models"]}
    assert (models["fits"]["placement"], models["fits"]["placement_workers"]) == ("placed", "w1")
    assert models["huge"]["placement"] == "schedule_failed"
    assert models["huge"]["placement_reason"] == "needs 900 MB, largest free 400 MB"

    assert json.loads(out)["workers"][0]["labels"] == ["cpu"] and json.loads(out)["workers"][0]["follows"] is True

    code, out, _ = await fleet(capsys, "status", *fleet_args)
    assert "labels=cpu  follows its assignment" in out
    assert "  placement fits: placed on w1" in out.splitlines()
    assert "  placement huge: schedule_failed: needs 900 MB, largest free 400 MB" in out.splitlines()
