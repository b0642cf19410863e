"""Every fleet publisher wakes a pool worker's dormant partition, not only the gateway: against the real broker and
Redis, a worker whose sweeps are a minute apart answers at once a request sent by the direct producer
(`fleet.client.producer`, which ``fleet batch run`` uses), and one sent by a raw Kafka producer once the
autoscaler's lag collector saw records arrive on a partition whose committed offset stayed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from autoscaler import LagCollector
from common.wake import WakeNotes
from fleet.client.producer import FleetProducer
from schemas import FleetSettings, Names
from workers import Worker

from .conftest import make_request
from .test_pool import _expected, _register, _Replies, _send, _settings
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


async def test_the_lag_collector_wakes_a_dormant_partition_a_raw_producer_wrote_to(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    records = await _register(fleet_settings, names, redis_client, tmp_path, ["r0"])
    settings = _settings(
        fleet_settings, tmp_path, "wake-r", models=("r0",), pool_dormant_after_s=0.3, pool_dormant_sweep_ms=SWEEP_MS
    )
    stream = names.reply_stream("wake-raw")
    x = np.ones((1, 16), np.float32)
    replies = _Replies(redis_client, stream)
    wake = WakeNotes(redis_client, names, interval_s=1.0)
    wake.start()
    stop = asyncio.Event()

    async def rounds(collector: LagCollector) -> None:
        while not stop.is_set():  # the autoscaler's control loop, as fast as the test wants
            await collector.collect(["r0"])
            await asyncio.sleep(0.2)

    try:
        async with Worker(settings) as worker, LagCollector(fleet_settings, on_waiting=wake.note) as collector:
            await worker.wait_ready(30)
            consumer = _interactive_consumer(worker)
            await _until_asleep(consumer, set(consumer.assignment()))
            await collector.collect(["r0"])  # every partition measured once, with nothing waiting
            task = asyncio.create_task(rounds(collector))
            try:
                await _send(producer, names.request_topic("r0"), [make_request(stream, x, model="r0", rid="r0-r")])
                await replies.until(lambda r: "r0-r" in r.ids(), timeout_s=20)
            finally:
                stop.set()
                await task
    finally:
        await wake.stop()
    (reply,) = replies.entries
    np.testing.assert_allclose(reply.outputs[0].to_numpy(), _expected(records["r0"], x), rtol=1e-5, atol=1e-6)
