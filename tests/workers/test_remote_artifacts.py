"""Models registered by http(s) URL (real HTTP server, broker and Redis): the record keeps the URL and
the hash, a worker downloads the artifact once into its disk cache and serves it, keeps serving from the
cache when the server is gone, and refuses a download that is missing or not the registered bytes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from fleet.demo.modelgen import tiny_mlp
from fleet.models.artifacts import build_record
from schemas import ErrorCode, FleetSettings, ModelRegistry, Names, sha256_file
from schemas.topics import ensure_model_topics
from tests.fileserver import serve_folder
from workers import Worker, WorkerSettings

from .test_multimodel import _ask

pytestmark = pytest.mark.integration


def _settings(fleet: FleetSettings, cache: Path) -> WorkerSettings:
    return WorkerSettings(models=("remote",), fleet=fleet, drain_timeout_s=10, cache_dir=str(cache))


async def test_a_model_registered_by_url_is_downloaded_once_and_served_from_the_cache(
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    producer: AIOKafkaProducer,
    stream: str,
    tmp_path: Path,
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    local = tiny_mlp(served / "remote.onnx")
    cache = tmp_path / "cache"
    with serve_folder(served) as base:
        url = f"{base}/remote.onnx?token=abc"
        record = build_record("remote", "1", url)
        assert record.artifact == url and record.sha256 == sha256_file(local)
        assert [s.name for s in record.inputs] == ["x"]  # the signature was read from the download
        await ModelRegistry(redis_client, names).register(record)
        await ensure_model_topics(fleet_settings.kafka, names, "remote")
        async with Worker(_settings(fleet_settings, cache)) as worker:
            await worker.wait_ready(30)
            reply = await _ask(producer, names, redis_client, stream, "remote")
            assert reply.error is None and reply.outputs[0].shape == (1, 4)
        assert [p.name for p in cache.rglob("*.onnx")] == [f"{record.sha256}.onnx"]

        # The server now has other bytes under that URL: a worker with an empty cache refuses them.
        shutil.copyfile(tiny_mlp(tmp_path / "other.onnx", seed=7), served / "remote.onnx")
        async with Worker(_settings(fleet_settings, tmp_path / "cold-1")) as worker:
            await worker.wait_ready(30)
            reply = await _ask(producer, names, redis_client, stream, "remote")
        assert reply.error is not None and reply.error.code is ErrorCode.MODEL_LOAD_FAILED
        assert "the registry expects" in reply.error.message and "token=abc" not in reply.error.message

    # The server is gone: the warm cache still serves; an empty one says why it cannot.
    async with Worker(_settings(fleet_settings, cache)) as worker:
        await worker.wait_ready(30)
        assert (await _ask(producer, names, redis_client, stream, "remote")).error is None
    async with Worker(_settings(fleet_settings, tmp_path / "cold-2")) as worker:
        await worker.wait_ready(30)
        reply = await _ask(producer, names, redis_client, stream, "remote")
    assert reply.error is not None and reply.error.code is ErrorCode.MODEL_LOAD_FAILED
    assert "cannot download artifact http://127.0.0.1:" in reply.error.message
