"""A pool consumer's fetch routine must not sleep through records when a fetch finishes in the same event-loop turn
as something else wakes it (a resume of a sleeping partition, here): aiokafka then planned its next round with the
broker still marked "in flight" (the mark is cleared by a done-callback that had not run yet), sent no fetch, waited
on no resume, and slept until its timer, 30 s for a pool consumer with dormancy on (`common.fetch_wake`). The
race is made deterministic by resuming a paused partition one loop turn before a fetch's coroutine returns."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from schemas import FleetSettings, Names
from workers import Worker

from .conftest import make_request
from .test_pool import _register, _Replies, _send, _settings
from .test_pool_dormancy import _interactive_consumer

pytestmark = pytest.mark.integration


def _race_on_next_fetch(consumer: Any, paused: TopicPartition) -> asyncio.Event:
    """The next fetch, once answered, resumes ``paused`` one loop turn before it returns: the routine's wait is
    woken by that resume, and sees the fetch done before the fetch's done-callbacks ran. Set when it happened."""
    fetcher = consumer._fetcher
    original = fetcher._proc_fetch_request
    raced = asyncio.Event()

    async def racing(assignment: Any, node_id: int, request: Any) -> Any:
        result = await original(assignment, node_id, request)
        if not raced.is_set() and paused in consumer.paused():
            consumer.resume(paused)
            await asyncio.sleep(0)  # the routine's wait wakes on the resume; this fetch finishes in the same turn
            raced.set()
        return result

    fetcher._proc_fetch_request = racing  # the routine looks it up on the instance for every fetch
    return raced


async def test_a_fetch_answered_beside_a_resume_does_not_leave_records_unfetched(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    await _register(fleet_settings, names, redis_client, tmp_path, ["r0"])
    # Dormancy on (the fetch routine's 30 s timer), but nothing falls asleep or is swept during the test.
    settings = _settings(
        fleet_settings, tmp_path, "race", models=("r0",), pool_dormant_after_s=60, pool_dormant_sweep_ms=60_000
    )
    stream = names.reply_stream("race")
    replies = _Replies(redis_client, stream)
    topic = names.request_topic("r0")
    async with Worker(settings) as worker:
        await worker.wait_ready(30)
        consumer = _interactive_consumer(worker)
        assert "_get_actions_per_node" in vars(consumer._fetcher)  # guarded (this aiokafka has what it relies on)
        paused = TopicPartition(topic, 1)
        consumer.pause(paused)
        raced = _race_on_next_fetch(consumer, paused)
        await asyncio.wait_for(raced.wait(), 10)
        # Whichever partition the request lands on: the routine must fetch again, not sleep 30 s.
        x = np.ones((1, 16), np.float32)
        await _send(producer, topic, [make_request(stream, x, model="r0", rid="after-race")])
        await replies.until(lambda r: "after-race" in r.ids(), timeout_s=10)
