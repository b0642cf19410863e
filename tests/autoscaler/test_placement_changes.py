"""The placement round writes only what changed, and `read_placement` dates each status by the last round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoscaler.placement_store import PlacementRunner, read_placement
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import ModelRegistry, Names


async def _commands(redis: Any, *names: str) -> int:
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{n}", {}).get("calls", 0)) for n in names)


async def test_unchanged_placements_are_not_rewritten(redis_client: Any, names: Names, tmp_path: Path) -> None:
    artifact = tiny_mlp(tmp_path / "tiny.onnx")
    registry = ModelRegistry(redis_client, names)
    models = [f"m{i:02d}" for i in range(20)]
    for model in models:
        await registry.register(build_record(model, "1", artifact))
    runner = PlacementRunner(redis_client, names)
    first = await runner.run(models, {})
    assert {s.state.value for s in first.status.values()} == {"schedule_failed"}  # no worker at all
    stored = await read_placement(redis_client, names, models)
    first_ts = int(stored["m00"]["ts_ms"])

    writes = await _commands(redis_client, "hset", "del", "sadd", "mget", "hgetall")
    for _ in range(3):
        await runner.run(models, {})
    # Nothing changed: no status rewritten, no record read again.
    assert await _commands(redis_client, "hset", "del", "sadd", "mget", "hgetall") == writes
    stamp = int(await redis_client.get(names.placement_round_key))
    assert stamp >= first_ts
    assert {int(s["ts_ms"]) for s in (await read_placement(redis_client, names, models)).values()} == {stamp}

    # A change (a cap of 0 replicas on one model) is written for that model alone.
    await registry.register(build_record("m05", "2", artifact, labels={"max_replicas": "0"}), make_default=True)
    before = await _commands(redis_client, "hset")
    result = await runner.run(models, {})
    assert result.status["m05"].state.value != "schedule_failed"
    assert await _commands(redis_client, "hset") == before + 1
