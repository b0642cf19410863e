"""Measured model footprints: the pure measurement and the value a worker records in the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fleet.demo.modelgen import mlp_onnx, random_mlp
from fleet.models.artifacts import build_record
from schemas import ModelRecord, ModelRegistry, Names
from workers import Worker
from workers.footprint import measure, resident_bytes, trim_heap
from workers.runtimes import load_runtime


def test_resident_memory_growth_is_measured() -> None:
    def load() -> np.ndarray:
        return np.ones(32 * 1024 * 1024, dtype=np.uint8)  # 32 MiB, touched

    array, size = measure(load, lambda _: "cpu", fallback_bytes=1)
    assert array.nbytes <= size < 2 * array.nbytes
    assert resident_bytes() > array.nbytes


def test_no_growth_falls_back_to_the_declared_size() -> None:
    # 64 MiB: far above what other threads of the test process may allocate meanwhile
    _, size = measure(lambda: None, lambda _: "cpu", fallback_bytes=64 * 1024 * 1024)
    assert size == 64 * 1024 * 1024


def test_cuda_device_without_nvml_falls_back() -> None:
    _, size = measure(lambda: None, lambda _: "cuda:0", fallback_bytes=7)
    assert size == 7


async def test_worker_records_the_measured_size(
    worker: Worker, tiny_model: ModelRecord, redis_client: Any, names: Names
) -> None:
    registry = ModelRegistry(redis_client, names)
    record = await registry.get(tiny_model.name, tiny_model.version)
    assert record.size_measured and record.size_bytes > 0
    # recorded for the kind of device it was measured on: a GPU worker does not take a CPU's RSS as its own
    assert await registry.measured_sizes(tiny_model.name, tiny_model.version) == {"cpu": record.size_bytes}


def test_an_unloaded_onnx_model_gives_its_memory_back(tmp_path: Path) -> None:
    """What an eviction does (runtime.unload, then trim_heap) really lowers the process's resident memory."""
    record = build_record("big", "1", mlp_onnx(tmp_path / "big.onnx", random_mlp([512, 1024, 1024, 512])))
    trim_heap()
    runtime, footprint = measure(lambda: load_runtime(record, "cpu"), lambda rt: rt.device, 0)
    assert footprint >= record.size_bytes  # the weights (~8 MB) are in memory
    loaded = resident_bytes()
    runtime.unload()
    trim_heap()
    assert loaded - resident_bytes() >= record.size_bytes // 2
