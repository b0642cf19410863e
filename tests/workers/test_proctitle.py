"""The worker's process title (`workers.proctitle`): the text, pure; set by the worker process only, never by
a process that embeds a worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import FleetSettings, ModelRegistry, Names
from schemas.topics import ensure_model_topics
from workers import Worker, WorkerSettings
from workers.proctitle import MAX_TITLE, title


def test_pool_title_counts_models_and_resident() -> None:
    assert title("pool-3f2a", "pool", ["b", "a", "c"], 2) == "fleet-worker pool-3f2a pool: 3 models, 2 resident"


def test_models_title_lists_them_and_cuts_a_long_list() -> None:
    assert title("w1", "models", ["tiny", "resnet"], 1) == "fleet-worker w1 model=resnet,tiny"
    assert title("w1", "models", [], 0) == "fleet-worker w1 model=-"
    many = title("w1", "models", [f"model-{i:03d}" for i in range(100)], 0)
    assert len(many) <= MAX_TITLE and many.endswith(",... (100 models)")


@pytest.fixture
async def tiny(fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path) -> WorkerSettings:
    """Settings of a worker serving a registered tiny model."""
    await ModelRegistry(redis_client, names).register(build_record("tiny", "1", tiny_mlp(tmp_path / "tiny.onnx")))
    await ensure_model_topics(fleet_settings.kafka, names, "tiny")
    return WorkerSettings(models=("tiny",), fleet=fleet_settings, cache_dir=str(tmp_path / "cache"))


@pytest.fixture
def process_title() -> Iterator[str]:
    """This process's title, written back afterwards."""
    setproctitle = pytest.importorskip("setproctitle")
    before = setproctitle.getproctitle()
    yield before
    setproctitle.setproctitle(before)


@pytest.mark.integration
async def test_a_worker_embedded_in_a_process_leaves_its_title_alone(tiny: WorkerSettings, process_title: str) -> None:
    from setproctitle import getproctitle

    async with Worker(tiny) as worker:
        await worker.wait_ready(30)  # a worker that sets its title does so as it becomes ready
        assert getproctitle() == process_title


@pytest.mark.integration
async def test_the_worker_process_shows_what_it_serves(tiny: WorkerSettings, process_title: str) -> None:
    from setproctitle import getproctitle

    async with Worker(tiny, process_title=True) as worker:  # as `python -m workers` runs it
        await worker.wait_ready(30)
        assert getproctitle() == f"fleet-worker {worker.id} model=tiny"
