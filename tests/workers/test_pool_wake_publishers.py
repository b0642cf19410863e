"""Every fleet publisher wakes a pool worker's dormant partition, not only the gateway: against the real broker and
Redis, a worker whose sweeps are a minute apart answers at once a request sent by the direct producer
(`fleet.client.producer`, which ``fleet batch run`` uses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.client.producer import FleetProducer
from schemas import FleetSettings, Names
from workers import Worker

from .test_pool import _expected, _register, _settings
from .test_pool_dormancy import _interactive_consumer, _until_asleep

pytestmark = pytest.mark.integration

#: Far beyond the tests' waits: only a wake note can have the partition fetched.
SWEEP_MS = 60_000


async def test_a_direct_producers_request_wakes_a_dormant_partition(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path
) -> None:
    records = await _register(fleet_settings, names, redis_client, tmp_path, ["p0"])
    settings = _settings(
        fleet_settings, tmp_path, "wake-p", models=("p0",), pool_dormant_after_s=0.3, pool_dormant_sweep_ms=SWEEP_MS
    )
    x = np.ones((1, 16), np.float32)
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        consumer = _interactive_consumer(worker)
        await _until_asleep(consumer, set(consumer.assignment()))
        async with FleetProducer(fleet_settings, timeout_s=20) as producer:
            y = await producer.infer("p0", {"x": x})
    np.testing.assert_allclose(next(iter(y.values())), _expected(records["p0"], x), rtol=1e-5, atol=1e-6)
