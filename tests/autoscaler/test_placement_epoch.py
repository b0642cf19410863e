"""The placement epoch moves with every round that changed a placement status, and only then (pool workers
re-read their models' placements when it moved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoscaler.placement_store import PlacementRunner
from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import ModelRegistry, Names


async def test_the_placement_epoch_moves_with_changed_placements_only(
    redis_client: Any, names: Names, tmp_path: Path
) -> None:
    artifact = tiny_mlp(tmp_path / "tiny.onnx")
    registry = ModelRegistry(redis_client, names)
    models = ["m0", "m1", "m2"]
    for model in models:
        await registry.register(build_record(model, "1", artifact))
    runner = PlacementRunner(redis_client, names)
    await runner.run(models, {})
    assert await redis_client.get(names.placement_epoch_key) == b"1"  # every status was new
    for _ in range(3):
        await runner.run(models, {})
    assert await redis_client.get(names.placement_epoch_key) == b"1"  # nothing changed
    await registry.register(build_record("m1", "2", artifact, labels={"max_replicas": "0"}), make_default=True)
    await runner.run(models, {})
    assert await redis_client.get(names.placement_epoch_key) == b"2"  # m1's status changed
