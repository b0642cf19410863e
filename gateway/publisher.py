"""Publishing requests to their model's Kafka topic, bounded in time so a dead broker means 503, not a hang.

The producer connects in a background routine that retries with backoff: the gateway starts (and
answers liveness) while Kafka is down, and begins publishing as soon as the broker is reachable.
Once connected, aiokafka reconnects by itself; every publish is bounded by ``timeout_s``. After a publish
fails or times out, the publisher answers 503 at once (no request waits on a dead broker) until a
background metadata probe reaches the cluster again, every ``_PROBE_INTERVAL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from schemas import ENVELOPE_VERSION, InferenceRequest, KafkaSettings
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID

from .errors import BackendDownError, PayloadTooLargeError

log = logging.getLogger("fleet.gateway")

_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 5.0
_VERSION_HEADER = (HEADER_ENVELOPE_VERSION, str(ENVELOPE_VERSION).encode())
_PROBE_INTERVAL_S = 0.25


class RequestPublisher:
    """One shared AIOKafkaProducer for every request of the process."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float) -> None:
        self._kafka = kafka
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._last_error = "not connected yet"
        self._probe_task: asyncio.Task[None] | None = None  # runs while the broker is believed down

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
        for task in (self._connect_task, self._probe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._connect_task = self._probe_task = None
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError):
                async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                    await producer.stop()

    async def publish(self, topic: str, request: InferenceRequest) -> None:
        """Produce ``request`` keyed by its id; PayloadTooLargeError (413) or BackendDownError (503)."""
        producer = self._producer
        if producer is None or self._probe_task is not None:
            raise BackendDownError("kafka", self._last_error)
        key = request.id.encode()
        value = request.to_bytes()
        headers = [(HEADER_REQUEST_ID, key), _VERSION_HEADER]
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self._kafka.max_request_bytes:
            raise PayloadTooLargeError("Kafka record", size, self._kafka.max_request_bytes)
        try:
            async with asyncio.timeout(self._timeout_s):
                await producer.send_and_wait(topic, value, key=key, headers=headers)
        except TimeoutError:
            self._trip(f"publish took longer than {self._timeout_s:g} s")
            raise BackendDownError("kafka", self._last_error) from None
        except MessageSizeTooLargeError:
            raise PayloadTooLargeError("Kafka record", size, self._kafka.max_request_bytes) from None
        except KafkaError as exc:
            self._trip(f"publish failed: {exc}")
            raise BackendDownError("kafka", self._last_error) from exc

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
        backoff = _BACKOFF_MIN_S
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                producer = AIOKafkaProducer(**self._kafka.producer_kwargs())
                await producer.start()
            except Exception as exc:  # KafkaError/OSError mostly; anything else must not kill the routine
                if backoff == _BACKOFF_MIN_S:  # log the first failure of a streak, not every retry
                    log.warning(
                        "kafka not reachable, retrying", extra={"bootstrap": self._kafka.bootstrap, "error": str(exc)}
                    )
                self._last_error = f"cannot connect to {self._kafka.bootstrap}: {exc}"
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            except BaseException:  # cancelled by stop() while starting
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(producer.stop())
                raise
            log.info("kafka producer connected", extra={"bootstrap": self._kafka.bootstrap})
            self._producer = producer
            return
