"""GPU inventory: totals, Redis round trip, zero GPUs without NVML."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from autoscaler import GpuInfo, GpuInventory, InventoryPublisher, inventory_key, publish_inventory, read_inventory
from autoscaler.inventory import build_inventory, detect_gpu_count, read_gpus
from schemas import Names

GPU0 = GpuInfo(0, "H100", 50.0, 10 << 30, 80 << 30)
GPU1 = GpuInfo(1, "H100", 0.0, 0, 80 << 30)


def test_zero_gpus() -> None:
    inventory = build_inventory("h", [], {}, 1.0)
    assert (inventory.total, inventory.allocated, inventory.available) == (0, 0, 0)


def test_allocation_counts_gpus_not_workers() -> None:
    inventory = build_inventory("h", [GPU1, GPU0], {0: ["w2", "w1"]}, 1.0)
    assert [g.index for g in inventory.gpus] == [0, 1]
    assert inventory.gpus[0].workers == ("w1", "w2") and inventory.gpus[1].workers == ()
    assert (inventory.total, inventory.allocated, inventory.available) == (2, 1, 1)


def test_allocation_to_an_unmeasured_gpu_adds_it() -> None:
    inventory = build_inventory("h", [], {1: ["w1"]}, 1.0)
    assert (inventory.total, inventory.allocated, inventory.available) == (1, 1, 0)
    assert inventory.gpus[0].name == "unknown"


def test_nvml_reading_never_fails() -> None:
    gpus = read_gpus()
    assert detect_gpu_count() == len(gpus)
    assert all(g.memory_total >= g.memory_used >= 0 for g in gpus)


@pytest.mark.parametrize(
    "raw",
    [{}, {b"gpus": b"not json", b"ts_ms": b"1"}, {b"gpus": b"{}", b"ts_ms": b"1"}, {b"gpus": b"[{}]", b"ts_ms": b"1"}],
)
def test_malformed_hash_is_ignored(raw: dict[bytes, bytes]) -> None:
    assert GpuInventory.from_fields("h", raw) is None


async def test_publish_and_read_back(redis_client: Any, names: Names) -> None:
    now = float(int(time.time() * 1000))  # stored as whole ms
    fresh = build_inventory("gpu-host", [GPU0, GPU1], {1: ["w1"]}, now)
    await publish_inventory(redis_client, names, fresh)
    await publish_inventory(redis_client, names, build_inventory("old-host", [], {}, now - 120_000))
    (read,) = await read_inventory(redis_client, names, max_age_s=60)
    assert read == fresh and (read.total, read.allocated, read.available) == (2, 1, 1)
    fields = await redis_client.hgetall(inventory_key(names, "gpu-host"))
    assert fields[b"total"] == b"2" and fields[b"available"] == b"1"
    assert 0 < await redis_client.ttl(inventory_key(names, "gpu-host")) <= 30


async def test_publisher_with_zero_gpus(redis_client: Any, names: Names) -> None:
    async with InventoryPublisher(redis_client, names, dict, interval_s=0.05, host="cpu-only", gpus=list) as pub:
        assert pub.latest is not None and pub.latest.total == 0
        first = pub.latest
        deadline = time.monotonic() + 5
        while pub.latest is first:
            assert time.monotonic() < deadline, "no second report"
            await asyncio.sleep(0.02)
    (read,) = await read_inventory(redis_client, names)
    assert (read.host, read.total, read.allocated, read.available, read.gpus) == ("cpu-only", 0, 0, 0, ())
