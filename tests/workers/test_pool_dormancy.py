"""A pool worker with dormant partitions on (the local stack's setting) against the real broker and Redis: quiet
partitions leave the fetches, and a request to a dormant model is still answered, once and right."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from schemas import FleetSettings, Lane, Names
from workers import Worker
from workers.pool import PoolConsumer

from .conftest import make_request
from .test_pool import _expected, _register, _Replies, _send, _settings

pytestmark = pytest.mark.integration


def _interactive_consumer(worker: Worker) -> Any:
    pool = worker.pool
    assert isinstance(pool, PoolConsumer)
    return pool._consumers[Lane.INTERACTIVE]


async def _until_asleep(consumer: Any, partitions: set[Any], timeout_s: float = 20.0) -> None:
    """Until every one of ``partitions`` is paused (nothing arrives: they fall asleep)."""
    deadline = time.monotonic() + timeout_s
    while not partitions <= consumer.paused():
        assert time.monotonic() < deadline, f"awake after {timeout_s:g} s: {partitions - consumer.paused()}"
        await asyncio.sleep(0.05)


async def test_quiet_partitions_sleep_and_a_request_to_a_dormant_model_is_answered(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    models = ["d0", "d1", "d2"]
    records = await _register(fleet_settings, names, redis_client, tmp_path, models)
    settings = _settings(
        fleet_settings, tmp_path, "dorm", models=tuple(models), pool_dormant_after_s=0.5, pool_dormant_sweep_ms=100
    )
    stream = names.reply_stream("dormant")
    x = np.random.default_rng(4).standard_normal((1, 16)).astype(np.float32)
    replies = _Replies(redis_client, stream)
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        consumer = _interactive_consumer(worker)
        interactive = set(consumer.assignment())
        assert len(interactive) == 6
        await _until_asleep(consumer, interactive)
        for round_ in range(2):  # each model woken from sleep, twice (asleep again in between)
            await _send(producer, names.request_topic("d1"), [make_request(stream, x, model="d1", rid=f"d1-{round_}")])
            await _send(producer, names.request_topic("d2"), [make_request(stream, x, model="d2", rid=f"d2-{round_}")])
            await replies.until(lambda r, n=round_: len(r.ids()) >= 2 * (n + 1), timeout_s=30)
            if round_ == 0:
                await _until_asleep(consumer, interactive)
    assert sorted(Counter(r.id for r in replies.entries).values()) == [1, 1, 1, 1]
    for reply in replies.entries:
        assert reply.error is None
        np.testing.assert_allclose(
            reply.outputs[0].to_numpy(), _expected(records[reply.model], x), rtol=1e-5, atol=1e-6
        )


async def test_a_wake_note_has_a_dormant_partition_fetched_before_its_sweep(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    records = await _register(fleet_settings, names, redis_client, tmp_path, ["w0"])
    # Sweeps a minute apart: only the gateway's note (published here as a gateway does) can wake the partition.
    settings = _settings(
        fleet_settings, tmp_path, "wake", models=("w0",), pool_dormant_after_s=0.3, pool_dormant_sweep_ms=60_000
    )
    stream = names.reply_stream("wake")
    x = np.ones((1, 16), np.float32)
    replies = _Replies(redis_client, stream)
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        consumer = _interactive_consumer(worker)
        await _until_asleep(consumer, set(consumer.assignment()))
        topic = names.request_topic("w0")
        landed = await producer.send_and_wait(topic, make_request(stream, x, model="w0", rid="w0-r").to_bytes())
        await redis_client.publish(names.wake_channel, f"{topic}:{landed.partition}")
        await replies.until(lambda r: "w0-r" in r.ids(), timeout_s=20)  # long before the next sweep
    (reply,) = replies.entries
    np.testing.assert_allclose(reply.outputs[0].to_numpy(), _expected(records["w0"], x), rtol=1e-5, atol=1e-6)
