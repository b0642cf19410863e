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

Records go to partitions that have a leader: the key (the request id) orders nothing, so the partitioner
(``LeaderPartitioner``) spreads records at random over the topic's partitions with a leader, and over all of
them only when none has one (aiokafka's default hashes the key over every partition, so during a broker
restart a share of records waited on, and failed for, partitions without a leader).

Two breakers answer 503 at once so that no request waits on what is known to be down. The cluster's trips
only on evidence that the cluster is unreachable: a failed publish, or one slower than ``timeout_s``, makes
the publisher ask the cluster for metadata, and only when that fails do all publishes fail fast, until a
background metadata probe reaches the cluster again (every ``_PROBE_INTERVAL_S``). A topic's trips when its
publish failed or its metadata (partitions with a leader) did not come within ``timeout_s`` while the cluster
answers: publishes to that topic fail fast (503 BACKEND_UNAVAILABLE naming it) until a probe of that topic
finds a partition with a leader (every ``_TOPIC_PROBE_INTERVAL_S``, the first after that long), and every
other topic keeps flowing. A hand-over that waits past ``timeout_s`` on a topic whose metadata is there
waits on this gateway's own producer (its buffer is full): 503 OVERLOADED.

The producer is idempotent (``enable_idempotence``: a broker-side retry cannot write a request twice, which
would run it twice) per ``FLEET_KAFKA_IDEMPOTENCE``: with ``auto``, unless the cluster is the embedded broker,
which lacks it (``KafkaSettings.idempotent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from common import Backoff, BackoffPolicy, tracing
from schemas import ENVELOPE_VERSION, FleetError, InferenceRequest, KafkaSettings, Names
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.topics import BulkTopics, cluster_info

from .errors import BackendDownError, OverloadedError, PayloadTooLargeError
from .limits import check_queued_size

log = logging.getLogger("fleet.gateway")

#: Pauses between tries to connect the producer.
_CONNECT_RETRY = BackoffPolicy(first_s=0.1, max_s=5.0)
_VERSION_HEADER = (HEADER_ENVELOPE_VERSION, str(ENVELOPE_VERSION).encode())
_PROBE_INTERVAL_S = 0.25
#: Pause between probes of a tripped topic (and before the first): how long its publishes fail fast at least.
_TOPIC_PROBE_INTERVAL_S = 1.0


class LeaderPartitioner:
    """aiokafka partitioner that ignores the key: a random partition among those with a leader (``available``),
    or among all of them when none has one (the record then waits for a leader as it would anyway)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def __call__(self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
        """The partition of the next record of a topic (``all_partitions`` sorted, ``available`` any order)."""
        return self._rng.choice(list(available) if available else list(all_partitions))


class RequestPublisher:
    """One shared AIOKafkaProducer for every request of the process."""

    def __init__(
        self,
        kafka: KafkaSettings,
        timeout_s: float,
        max_bytes: int | None = None,
        names: Names | None = None,
        *,
        producer_factory: Callable[..., AIOKafkaProducer] = AIOKafkaProducer,
    ) -> None:
        self._kafka = kafka
        #: Builds the producer from keyword arguments (a seam for tests).
        self._producer_factory = producer_factory
        #: Whether the producer is idempotent (decided when it connects).
        self.idempotent = False
        #: Tripped topics -> why their publishes fail fast; each has a probe in ``_topic_probes``.
        self._topic_trips: dict[str, str] = {}
        self._topic_probes: dict[str, asyncio.Task[None]] = {}
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

    def topic_problem(self, topic: str) -> str | None:
        """Why publishes to ``topic`` fail fast now (its breaker is open), or None."""
        return self._topic_trips.get(topic)

    async def stop(self) -> None:
        """Stop connecting, flush what was sent and close the producer; idempotent."""
        probes = list(self._topic_probes.values())
        self._topic_probes.clear()
        self._topic_trips.clear()
        for task in (self._connect_task, self._probe_task, self._verify_task, *probes):
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
        hand-over took over ``timeout_s`` (not queued) while the cluster answers and the topic's metadata is
        there (this gateway's producer is backed up); BackendDownError (503) when the cluster's or the topic's
        breaker is open, the topic's metadata did not come in time, the hand-over timed out and the cluster does
        not answer either, or the delivery failed. Bound the call by the request's deadline: cancelled after
        the hand-over, the record may still land.
        """
        producer = self._producer
        if producer is None or self._probe_task is not None:
            raise BackendDownError("kafka", self._last_error)
        tripped = self._topic_trips.get(topic)
        if tripped is not None:
            raise BackendDownError("kafka", f"{tripped} (failing fast until the topic has a leader again)")
        key = request.id.encode()
        value = request.to_bytes()
        headers = [(HEADER_REQUEST_ID, key), _VERSION_HEADER]
        tracing.inject(headers)  # the request's trace context, when tracing is on
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        check_queued_size(size, self._max_bytes, self._limit_name)
        if self._bulk_topics is not None:
            await self._ensure_topic(self._bulk_topics, topic)
        loop = asyncio.get_running_loop()
        budget_end = loop.time() + self._timeout_s
        try:
            async with asyncio.timeout(self._timeout_s):
                # The topic's partitions and leaders first (at once when known): a topic without them is a
                # problem of that topic, a wait after them one of this gateway's producer.
                await producer.partitions_for(topic)
        except TimeoutError:
            if await self._cluster_answers():
                self._trip_topic(topic, f"no partition of {topic} with a leader within {self._timeout_s:g} s")
            raise BackendDownError(
                "kafka",
                f"publishing to {topic}: no topic metadata within {self._timeout_s:g} s (the request was not queued)",
            ) from None
        except KafkaError as exc:
            await asyncio.shield(self._verify_soon())
            if self._probe_task is None:
                self._trip_topic(topic, f"metadata of {topic} failed: {exc}")
            raise BackendDownError("kafka", f"publishing to {topic} failed: {exc}") from exc
        try:
            async with asyncio.timeout(max(0.0, budget_end - loop.time())):
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
            if self._probe_task is None:
                self._trip_topic(topic, f"publishing to {topic} failed: {exc}")
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
            if self._probe_task is None:  # the cluster answers: this topic failed
                self._trip_topic(topic, f"delivery to {topic} failed: {exc or type(exc).__name__}")
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

    def _trip_topic(self, topic: str, reason: str) -> None:
        """Fail publishes to ``topic`` fast until its probe finds a partition with a leader."""
        self._topic_trips[topic] = reason
        if topic not in self._topic_probes:
            log.warning("kafka topic failing; answering 503 for it until it has a leader", extra={"error": reason})
            self._topic_probes[topic] = asyncio.create_task(
                self._topic_probe_routine(topic), name=f"fleet-gateway-kafka-topic-probe-{topic}"
            )

    async def _topic_probe_routine(self, topic: str) -> None:
        try:
            while True:
                await asyncio.sleep(_TOPIC_PROBE_INTERVAL_S)
                producer = self._producer
                if producer is None:
                    continue
                try:
                    async with asyncio.timeout(self._timeout_s):
                        await producer.client.force_metadata_update()
                        await producer.partitions_for(topic)
                except (TimeoutError, KafkaError) as exc:
                    self._topic_trips[topic] = f"{topic} has no partition with a leader: {exc or type(exc).__name__}"
                    continue
                if producer.client.cluster.available_partitions_for_topic(topic):
                    break
                self._topic_trips[topic] = f"{topic} has no partition with a leader"
        finally:
            self._topic_probes.pop(topic, None)
            self._topic_trips.pop(topic, None)
        log.info("kafka topic reachable again", extra={"topic": topic})

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
                idempotent = await self._idempotence()
                kwargs = self._kafka.producer_kwargs(idempotent=idempotent)
                producer = self._producer_factory(**kwargs, partitioner=LeaderPartitioner())
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
            log.info("kafka producer connected", extra={"bootstrap": self._kafka.bootstrap, "idempotent": idempotent})
            self.idempotent = idempotent
            self._producer = producer
            return

    async def _idempotence(self) -> bool:
        """Whether to enable idempotence (``FLEET_KAFKA_IDEMPOTENCE``; with auto, ask the cluster's id when
        ``FLEET_KAFKA_BROKER`` is auto too). FleetError when the cluster cannot be asked."""
        kafka = self._kafka
        if kafka.idempotence != "auto" or kafka.broker != "auto":
            return kafka.idempotent(None)
        return kafka.idempotent((await cluster_info(kafka)).cluster_id)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a delivery report read (asyncio would log an unread failure)."""
    if not future.cancelled():
        future.exception()
