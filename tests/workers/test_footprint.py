"""Measured model footprints: the pure measurement and the value a worker records in the registry."""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas import ModelRecord, ModelRegistry, Names
from workers import Worker
from workers.footprint import measure, resident_bytes


def test_resident_memory_growth_is_measured() -> None:
    def load() -> np.ndarray:
        return np.ones(32 * 1024 * 1024, dtype=np.uint8)  # 32 MiB, touched

    array, size = measure(load, lambda _: "cpu", fallback_bytes=1)
    assert array.nbytes <= size < 2 * array.nbytes
    assert resident_bytes() > array.nbytes


def test_no_growth_falls_back_to_the_declared_size() -> None:
    _, size = measure(lambda: None, lambda _: "cpu", fallback_bytes=4242)
    assert size == 4242


def test_cuda_device_without_nvml_falls_back() -> None:
    _, size = measure(lambda: None, lambda _: "cuda:0", fallback_bytes=7)
    assert size == 7


async def test_worker_records_the_measured_size(
    worker: Worker, tiny_model: ModelRecord, redis_client: Any, names: Names
) -> None:
    record = await ModelRegistry(redis_client, names).get(tiny_model.name, tiny_model.version)
    assert record.size_measured and record.size_bytes > 0
