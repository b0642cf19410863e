"""Waiting for a worker group's commits: the observable end of a round (replies stored, offsets committed)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import FleetSettings, Names


async def wait_committed(
    settings: FleetSettings, names: Names, model: str, records: int, timeout_s: float = 20.0
) -> None:
    """Wait until ``model``'s worker group has committed ``records`` records of its request topic.

    Reads the committed offsets of every partition (created with ``settings.kafka.partitions``)
    through a client of the same group that never joins it.
    """
    topic = names.request_topic(model)
    consumer = AIOKafkaConsumer(**settings.kafka.consumer_kwargs(names.worker_group(model)))
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        deadline = time.monotonic() + timeout_s
        while True:
            total = sum([(await consumer.committed(tp)) or 0 for tp in partitions])
            if total >= records:
                return
            assert time.monotonic() < deadline, f"only {total} of {records} records committed"
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
