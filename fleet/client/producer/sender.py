"""The producer's Kafka side: pipelined sends of encoded requests to the models' request topics.

``send()`` only enqueues the record into aiokafka's batches and returns the delivery future (the caller
tracks delivery with a callback), so many requests share one produce request. Records go round robin
over the topic's partitions: the same spread as hashing the key, without aiokafka's pure-Python murmur2.
``linger_ms`` and ``max_batch_bytes`` (per partition) let aiokafka fill bigger produce requests: with
aiokafka's 16 KiB default a full batch makes ``send()`` wait, which caps a one-row-per-record stream well
below 10,000 records/s. Kafka errors come out as ``BackendUnavailableError``. The first send to a model's
bulk-lane topic creates it when it is missing (``schemas.topics.BulkTopics``, given ``names``). ``on_landed`` is
called with the topic and partition of every record Kafka acknowledged (`common.wake.WakeNotes.note`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import ENVELOPE_VERSION, BackendUnavailableError, FleetError, KafkaSettings, Names
from schemas.constants import HEADER_ENVELOPE_VERSION
from schemas.topics import BulkTopics

_VERSION_HEADER = [(HEADER_ENVELOPE_VERSION, str(ENVELOPE_VERSION).encode())]


class RequestSender:
    """One ``AIOKafkaProducer`` sending request envelopes; ``start()`` once, ``stop()`` (idempotent) flushes."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        linger_ms: int = 5,
        max_batch_bytes: int = 256 * 1024,
        names: Names | None = None,
        on_landed: Callable[[str, int], None] | None = None,
    ) -> None:
        self._kafka = kafka
        self._on_landed = on_landed
        self._bulk_topics = BulkTopics(kafka, names) if names is not None else None
        self._options = {"linger_ms": linger_ms, "max_batch_size": max_batch_bytes}
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, list[int]] = {}
        self._turn = 0

    async def start(self) -> None:
        """Connect to the brokers (BackendUnavailableError when none answers)."""
        if self._producer is not None:
            raise RuntimeError("a RequestSender starts once")
        producer = AIOKafkaProducer(**(self._kafka.producer_kwargs() | self._options))
        try:
            await producer.start()
        except (KafkaError, OSError) as exc:
            await self._close(producer)
            raise BackendUnavailableError(f"Kafka unavailable at {self._kafka.bootstrap}: {exc}") from exc
        self._producer = producer

    async def stop(self) -> None:
        """Deliver what is batched (bounded by the Kafka request timeout) and close; idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._close(producer)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                await producer.stop()

    async def send(self, topic: str, key: str, value: bytes) -> asyncio.Future[Any]:
        """Enqueue one record (key ``key``) on ``topic``; the future resolves once Kafka holds it.

        Waits only while aiokafka's batch for the partition is full. BackendUnavailableError when Kafka
        refuses the record.
        """
        producer = self._producer
        if producer is None:
            raise RuntimeError("the sender is not started (or stopped)")
        try:
            partitions = self._partitions.get(topic) or await self._topic_partitions(producer, topic)
            self._turn += 1
            partition = partitions[self._turn % len(partitions)]
            sent: asyncio.Future[Any] = await producer.send(
                topic, value, key=key.encode(), partition=partition, headers=_VERSION_HEADER
            )
        except KafkaError as exc:
            raise BackendUnavailableError(f"Kafka refused the request: {exc}") from exc
        if self._on_landed is not None:
            sent.add_done_callback(self._landed)
        return sent

    def _landed(self, delivery: asyncio.Future[Any]) -> None:
        if self._on_landed is not None and not delivery.cancelled() and delivery.exception() is None:
            metadata = delivery.result()
            self._on_landed(metadata.topic, metadata.partition)

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged by Kafka."""
        if self._producer is not None:
            await self._producer.flush()

    async def _topic_partitions(self, producer: AIOKafkaProducer, topic: str) -> list[int]:
        if self._bulk_topics is not None:  # before asking for its partitions: that would auto-create it
            try:
                await self._bulk_topics.ensure(topic)
            except FleetError as exc:
                raise BackendUnavailableError(exc.message) from exc
        partitions = sorted(await producer.partitions_for(topic))
        if not partitions:
            raise KafkaError(f"topic {topic} has no partitions")
        self._partitions[topic] = partitions
        return partitions
