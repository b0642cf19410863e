"""The harness's guard against Kafka clients a test module leaves running (`tests.kafka_leaks`)."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from schemas import KafkaSettings
from tests.kafka_leaks import aiokafka_tasks, close_leaked


async def test_a_client_left_running_is_found_and_closed(kafka_bootstrap: str) -> None:
    before = set(aiokafka_tasks())
    producer = AIOKafkaProducer(**KafkaSettings(bootstrap=kafka_bootstrap).producer_kwargs())
    await producer.start()  # and never stopped by its owner
    try:
        leaked = [task for task in aiokafka_tasks() if task not in before]
        assert leaked  # its metadata sync and its sender
        (closed,) = await close_leaked(leaked)
        assert closed.startswith(f"{kafka_bootstrap} (") and "Sender._sender_routine" in closed
        assert all(task.done() for task in leaked)
        assert not [task for task in aiokafka_tasks() if task not in before]
    finally:
        await producer.stop()
