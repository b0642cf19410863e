"""Publishing requests to their model's Kafka topic, bounded in time so a dead broker means 503, not a hang.

The producer connects in a background routine that retries with backoff: the gateway starts (and
answers liveness) while Kafka is down, and begins publishing as soon as the broker is reachable.
Once connected, aiokafka reconnects by itself.

A publish has two steps. Handing the record to the producer (``send``: topic metadata, buffer space) is
bounded by ``timeout_s``; past it the answer is 503 for that request only, and the record was not queued
(``send`` appends it to a batch without awaiting anything after its last wait, so a cancelled ``send``
never appended it). Once handed over, the record may land at any moment until aiokafka reports it
delivered or failed, so the publisher waits for that report, within the caller's deadline (a sync
request's deadline is the deadline in its envelope: a record that lands after the gateway answered 504
is answered DEADLINE_EXCEEDED by the worker without running) and never answers 503 for a record that
may still land. A failed delivery is a 503 for that request.

A model's bulk-lane topic is created on first use: the first publish to it (``schemas.topics.BulkTopics``,
with ``names``) creates it when it is missing, within ``timeout_s`` (503 otherwise), and later ones skip that.

The breaker (answer 503 at once, no request waits on a dead broker) trips only on evidence that the
cluster is unreachable: a failed publish, or one slower than ``timeout_s``, makes the publisher ask the
cluster for metadata, and only when that fails do publishes fail fast, until a background metadata
probe reaches the cluster again (every ``_PROBE_INTERVAL_S``). A slow publish to one topic on a
reachable cluster fails nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from common import Backoff, BackoffPolicy
from schemas import ENVELOPE_VERSION, FleetError, InferenceRequest, KafkaSettings, Names
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.topics import BulkTopics

from .errors import BackendDownError, OverloadedError, PayloadTooLargeError
from .limits import check_queued_size

log = logging.getLogger("fleet.gateway")

#: Pauses between tries to connect the producer.
_CONNECT_RETRY = BackoffPolicy(first_s=0.1, max_s=5.0)
_VERSION_HEADER = (HEADER_ENVELOPE_VERSION, str(ENVELOPE_VERSION).encode())
_PROBE_INTERVAL_S = 0.25


class RequestPublisher:
    """One shared AIOKafkaProducer for every request of the process."""

    def __init__(
        self, kafka: KafkaSettings, timeout_s: float, max_bytes: int | None = None, names: Names | None = None
    ) -> None:
        self._kafka = kafka
        #: Creates bulk-lane topics on their first publish (None: every topic is taken to exist).
        self._bulk_topics = BulkTopics(kafka, names) if names is not None else None
        self._timeout_s = timeout_s
        if max_bytes is None or max_bytes > kafka.max_request_bytes:
            self._max_bytes, self._limit_name = kafka.max_request_bytes, "FLEET_KAFKA_MAX_REQUEST_BYTES"
        else:
            self._max_bytes, self._limit_name = max_bytes, "FLEET_GATEWAY_MAX_BODY_BYTES"
        # aiokafka fails a record by itself within about two request timeouts (batch expiry, then the
        # produce request); this cap only guards against a delivery report that never comes.
        self._delivery_cap_s = timeout_s + 3 * kafka.request_timeout_ms / 1000
        self._producer: AIOKafkaProducer | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._last_error = "not connected yet"
        self._probe_task: asyncio.Task[None] | None = None  # runs while the broker is believed down
        self._verify_task: asyncio.Task[None] | None = None  # one metadata check after a failed or slow publish

    @property
    def connected(self) -> bool:
        """True once the producer has bootstrapped (it reconnects on its own afterwards)."""
        return self._producer is not None

    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        if self._connect_task is None:
            self._connect_task = asyncio.create_task(self._connect_routine(), name="fleet-gateway-kafka-connect")

    async def stop(self) -> None:
        """Stop connecting, flush what was sent and close the producer; idempotent."""
        for task in (self._connect_task, self._probe_task, self._verify_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._connect_task = self._probe_task = self._verify_task = None
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError):
                async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                    await producer.stop()

    async def publish(self, topic: str, request: InferenceRequest) -> None:
        """Produce ``request`` keyed by its id and wait until it is delivered.

        PayloadTooLargeError (413) when the record is over the size limit; OverloadedError (503) when the
        hand-over took over ``timeout_s`` (not queued) while the cluster answers (this gateway's producer is
        backed up); BackendDownError (503) when the breaker is open, the hand-over timed out and the cluster
        does not answer either, or the delivery failed. Bound
        the call by the request's deadline: cancelled after the hand-over, the record may still land.
        """
        producer = self._producer
        if producer is None or self._probe_task is not None:
            raise BackendDownError("kafka", self._last_error)
        key = request.id.encode()
        value = request.to_bytes()
        headers = [(HEADER_REQUEST_ID, key), _VERSION_HEADER]
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        check_queued_size(size, self._max_bytes, self._limit_name)
        if self._bulk_topics is not None:
            await self._ensure_topic(self._bulk_topics, topic)
        try:
            async with asyncio.timeout(self._timeout_s):
                delivery = await producer.send(topic, value, key=key, headers=headers)
        except TimeoutError:
            if await self._cluster_answers():  # Kafka is fine: this gateway's producer is backed up (overload)
                raise OverloadedError(
                    f"publishing to {topic} waited over {self._timeout_s:g} s for the Kafka producer (the request "
                    "was not queued)"
                ) from None
            raise BackendDownError(
                "kafka", f"publishing to {topic} timed out after {self._timeout_s:g} s (the request was not queued)"
            ) from None
        except MessageSizeTooLargeError:
            raise PayloadTooLargeError(
                "Kafka record", len(value), self._kafka.max_request_bytes, "FLEET_KAFKA_MAX_REQUEST_BYTES"
            ) from None
        except KafkaError as exc:
            await asyncio.shield(self._verify_soon())
            raise BackendDownError("kafka", f"publishing to {topic} failed: {exc}") from exc
        delivery.add_done_callback(_retrieve)  # also when the caller stops waiting (its deadline passed)
        await self._delivered(topic, delivery)

    async def _ensure_topic(self, bulk_topics: BulkTopics, topic: str) -> None:
        """Create ``topic`` when it is a missing bulk-lane topic (503 when that fails or takes over ``timeout_s``)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await bulk_topics.ensure(topic)
        except TimeoutError:
            raise BackendDownError(
                "kafka", f"creating topic {topic} took over {self._timeout_s:g} s (the request was not queued)"
            ) from None
        except FleetError as exc:
            raise BackendDownError("kafka", f"{exc.message} (the request was not queued)") from exc

    async def _delivered(self, topic: str, delivery: asyncio.Future[Any]) -> None:
        """Wait for aiokafka's report on a handed-over record; 503 only when it says the record failed."""
        done, _ = await asyncio.wait({delivery}, timeout=self._timeout_s)
        if not done:
            self._verify_soon()  # slow: ask the cluster, but keep waiting, the record may land any moment
            done, _ = await asyncio.wait({delivery}, timeout=self._delivery_cap_s - self._timeout_s)
        if not done:
            raise BackendDownError(
                "kafka", f"no delivery report for {topic} within {self._delivery_cap_s:g} s; the request may still run"
            )
        exc = delivery.exception()
        if exc is not None:
            await asyncio.shield(self._verify_soon())
            raise BackendDownError("kafka", f"publishing to {topic} failed: {exc or type(exc).__name__}") from exc

    async def _cluster_answers(self) -> bool:
        """After a slow hand-over: does the cluster answer a metadata request within ``timeout_s``? (A failed
        check trips the breaker, as after any failed publish.)"""
        verify = self._verify_soon()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await asyncio.shield(verify)
        return verify.done() and self._probe_task is None

    def _verify_soon(self) -> asyncio.Task[None]:
        """One metadata check (shared by the publishes that ask at once); trips the breaker when it fails."""
        if self._verify_task is None:
            self._verify_task = asyncio.create_task(self._verify_routine(), name="fleet-gateway-kafka-verify")
        return self._verify_task

    async def _verify_routine(self) -> None:
        try:
            try:
                problem = await self.check()
            except Exception as exc:  # KafkaError/OSError mostly: the cluster did not answer
                problem = f"metadata request failed: {exc or type(exc).__name__}"
            if problem is not None and self._producer is not None:
                self._trip(problem)
        finally:
            self._verify_task = None

    def _trip(self, reason: str) -> None:
        """Fail publishes fast until the probe sees the cluster again."""
        self._last_error = reason
        if self._probe_task is None:
            log.warning("kafka looks down; answering 503 until it is back", extra={"error": reason})
            self._probe_task = asyncio.create_task(self._probe_routine(), name="fleet-gateway-kafka-probe")

    async def _probe_routine(self) -> None:
        try:
            while (problem := await self.check()) is not None:
                self._last_error = problem
                await asyncio.sleep(_PROBE_INTERVAL_S)
        finally:
            self._probe_task = None
        log.info("kafka reachable again", extra={"bootstrap": self._kafka.bootstrap})

    async def check(self) -> str | None:
        """None when a metadata round trip to the cluster succeeds in time, else why not."""
        producer = self._producer
        if producer is None:
            return self._last_error
        try:
            async with asyncio.timeout(self._timeout_s):
                updated = await producer.client.force_metadata_update()
        except TimeoutError:
            return f"no metadata from {self._kafka.bootstrap} within {self._timeout_s:g} s"
        return None if updated else f"no broker of {self._kafka.bootstrap} answers"

    async def _connect_routine(self) -> None:
        backoff = Backoff(_CONNECT_RETRY)
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                producer = AIOKafkaProducer(**self._kafka.producer_kwargs())
                await producer.start()
            except Exception as exc:  # KafkaError/OSError mostly; anything else must not kill the routine
                if backoff.failures == 0:  # log the first failure of a streak, not every retry
                    log.warning(
                        "kafka not reachable, retrying", extra={"bootstrap": self._kafka.bootstrap, "error": str(exc)}
                    )
                self._last_error = f"cannot connect to {self._kafka.bootstrap}: {exc}"
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                await backoff.sleep()
                continue
            except BaseException:  # cancelled by stop() while starting
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(producer.stop())
                raise
            log.info("kafka producer connected", extra={"bootstrap": self._kafka.bootstrap})
            self._producer = producer
            return


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a delivery report read (asyncio would log an unread failure)."""
    if not future.cancelled():
        future.exception()
