"""A pool worker whose partitions all sleep (dormancy on) leaves aiokafka's fetch routine asleep too: that routine
walks every assigned partition, paused ones included, each time it wakes, and on aiokafka's default 200 ms timer it
walked hundreds of sleeping partitions five times a second. A spy counts the walks of the interactive consumer's
fetch routine (aiokafka's ``Fetcher._get_actions_per_node``) over a quiet second; a wake note still has a sleeping
partition fetched at once afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from schemas import FleetSettings, Names
from tests.fetch_walks import count_fetch_walks
from workers import Worker

from .conftest import make_request
from .test_pool import _register, _Replies, _send, _settings
from .test_pool_dormancy import _interactive_consumer, _until_asleep

pytestmark = pytest.mark.integration

WINDOW_S = 1.0


async def test_sleeping_partitions_leave_the_fetch_routine_asleep(
    fleet_settings: FleetSettings,
    names: Names,
    redis_client: Any,
    tmp_path: Path,
    producer: AIOKafkaProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = ["q0", "q1"]
    await _register(fleet_settings, names, redis_client, tmp_path, models)
    settings = _settings(
        fleet_settings, tmp_path, "quiet", models=tuple(models), pool_dormant_after_s=0.3, pool_dormant_sweep_ms=60_000
    )
    walks = count_fetch_walks(monkeypatch)
    stream = names.reply_stream("quiet")
    replies = _Replies(redis_client, stream)
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        consumer = _interactive_consumer(worker)
        await _until_asleep(consumer, set(consumer.assignment()))
        await asyncio.sleep(0.3)  # the last fetch before they slept comes back
        fetcher = id(consumer._fetcher)
        before = walks.get(fetcher, 0)
        await asyncio.sleep(WINDOW_S)
        assert walks.get(fetcher, 0) - before <= 1
        topic = names.request_topic("q1")
        x = np.ones((1, 16), np.float32)
        await _send(producer, topic, [make_request(stream, x, model="q1", rid="q1-r")])
        for partition in (0, 1):  # whichever partition it landed on: a note wakes it
            await redis_client.publish(names.wake_channel, f"{topic}:{partition}")
        await replies.until(lambda r: "q1-r" in r.ids(), timeout_s=20)
