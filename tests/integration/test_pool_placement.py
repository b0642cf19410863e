"""``fleet up --placement`` with pool-mode workers (FLEET_WORKER_MODE=pool): the autoscaler's placement assigns
the models, the two worker processes own their partitions under leases, and every model answers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoscaler.placement_store import read_placement
from fleet.client import FleetClient
from fleet.client.stackfile import StackInfo
from fleet.demo.modelgen import tiny_mlp
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import FleetSettings, Lane, ModelRegistry, Names
from schemas.topics import ensure_model_topics

pytestmark = pytest.mark.integration

MODELS = ("pa", "pb", "pc", "pd")


async def test_placement_stack_runs_pool_workers_that_serve_every_model(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    registry = ModelRegistry(redis_client, names)
    for i, model in enumerate(MODELS):
        await registry.register(build_record(model, "1", tiny_mlp(tmp_path / f"{model}.onnx", seed=i)))
        await ensure_model_topics(fleet_settings.kafka, names, model, partitions=2)
    kafka = fleet_settings.kafka
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(
        FLEET_WORKER_MODE="pool",
        FLEET_AUTOSCALER_INTERVAL_S="0.2",
        FLEET_WORKER_HEARTBEAT_INTERVAL_S="0.3",
        FLEET_WORKER_CACHE_DIR=str(tmp_path / "cache"),
    )
    config = StackConfig(
        home=tmp_path / "home",
        namespace=names.namespace,
        kafka=kafka.bootstrap,
        redis=fleet_settings.redis.url,
        workers=2,
        placement=True,
        env=env,
    )
    x = np.ones((1, 16), dtype=np.float32)
    async with LocalStack(config) as stack, FleetClient(stack.url, timeout_s=20) as client:
        info = StackInfo.read(config.home)
        assert info is not None
        workers = {p.name for p in info.processes if p.role == "worker"}
        assert len(workers) == 2
        placements = await read_placement(redis_client, names, list(MODELS))
        for model in MODELS:
            assert placements[model]["state"] == "placed", placements[model]
            assert (await client.infer(model, {"x": x}))["y"].shape == (1, 4)
            # the model's partitions are leased by the worker(s) the placement gave it, and nobody else
            owners = set(placements[model]["workers"].split(","))
            topic = names.request_topic(model, Lane.INTERACTIVE)
            leased = await redis_client.mget([names.lease_key(topic, p) for p in range(2)])
            assert {v.decode() for v in leased if v is not None} <= owners and all(leased)
