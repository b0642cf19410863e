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

Coalescing (``FLEET_GATEWAY_COALESCE``): sync requests for one topic, version and reply stream published in
the same event-loop turn go as one batch record (``schemas.envelopes.InferenceRequestBatch``, header
``fleet-batch``), in parts within the size limit; the first of them waits out the rest of the turn, nothing
waits longer, and one alone goes as today's envelope. Each caller gets its own outcome (a part over the limit
is split; a member alone over it gets its 413). With ``auto`` a model's requests are coalesced only while
every worker serving it says it reads batch records (heartbeat ``caps``, read with the serviceability view);
not while tracing is on (each request keeps its own trace context on its record). A sync request that may be
coalesced also tells its worker that this gateway reads reply lists (``rl``): one reply-stream entry for a
round's replies to it.

The producer is idempotent (``enable_idempotence``: a broker-side retry cannot write a request twice, which
would run it twice) per ``FLEET_KAFKA_IDEMPOTENCE``: with ``auto``, unless the cluster is the embedded broker,
which lacks it (``KafkaSettings.idempotent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from common import Backoff, BackoffPolicy, tracing
from schemas import ENVELOPE_VERSION, FleetError, InferenceRequest, KafkaSettings, ModelRecord, Names, ReplyKind
from schemas.constants import HEADER_BATCH, HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.envelopes import InferenceRequestBatch
from schemas.text_models import TEXT_GENERATION
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
        on_landed: Callable[[str, int], None] | None = None,
    ) -> None:
        self._kafka = kafka
        #: Called with the topic and partition of every record that landed (`common.wake.WakeNotes.note`).
        self._on_landed = on_landed
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
        #: Coalescing (``configure_coalescing``): the mode, and whether every worker of a model reads batches.
        self._coalesce = "off"
        self._reads_batches: Callable[[str], bool] | None = None
        #: Groups open in this event-loop turn, by (topic, version, reply stream); the routines sending groups.
        self._groups: dict[tuple[str, str, str], _Group] = {}
        self._senders: set[asyncio.Task[None]] = set()

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
        senders = list(self._senders)  # their callers get 503 (the gateway is stopping)
        for task in (self._connect_task, self._probe_task, self._verify_task, *probes, *senders):
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

    def configure_coalescing(self, mode: str, reads_batches: Callable[[str], bool]) -> None:
        """Coalesce per ``mode`` (``FLEET_GATEWAY_COALESCE``: auto, on, off); with auto, for a model only while
        ``reads_batches(model)`` (every worker serving it reads batch records)."""
        self._coalesce = mode
        self._reads_batches = reads_batches

    async def publish(self, topic: str, request: InferenceRequest, *, coalesce: bool = False) -> None:
        """Produce ``request`` keyed by its id and wait until it is delivered.

        ``coalesce``: a sync request (a reply stream read by this gateway) that may travel with others for the
        same topic, version and reply stream that are published in the same event-loop turn, as one batch
        record (``InferenceRequestBatch``), when coalescing is on for its model; its worker may then answer it
        in a reply list (the request says this gateway reads them). Alone, it goes as today's envelope.

        PayloadTooLargeError (413) when the record is over the size limit; OverloadedError (503) when the
        hand-over took over ``timeout_s`` (not queued) while the cluster answers and the topic's metadata is
        there (this gateway's producer is backed up); BackendDownError (503) when the cluster's or the topic's
        breaker is open, the topic's metadata did not come in time, the hand-over timed out and the cluster does
        not answer either, or the delivery failed. Bound the call by the request's deadline: cancelled after
        the hand-over, the record may still land.
        """
        reply = request.reply
        lists = coalesce and self._coalesce != "off" and reply.kind is ReplyKind.STREAM and not reply.ttl_s
        if lists and not tracing.enabled() and self._batches_for(request.model):
            await self._publish_grouped(topic, request)
        else:
            await self._publish_one(topic, request, lists)

    def _batches_for(self, model: str) -> bool:
        if self._coalesce == "on":
            return True
        return self._coalesce == "auto" and self._reads_batches is not None and self._reads_batches(model)

    def _check_breakers(self, topic: str) -> AIOKafkaProducer:
        """The producer, unless the cluster's or ``topic``'s breaker is open (BackendDownError)."""
        producer = self._producer
        if producer is None or self._probe_task is not None:
            raise BackendDownError("kafka", self._last_error)
        tripped = self._topic_trips.get(topic)
        if tripped is not None:
            raise BackendDownError("kafka", f"{tripped} (failing fast until the topic has a leader again)")
        return producer

    async def _publish_one(self, topic: str, request: InferenceRequest, lists: bool) -> None:
        """One request as one record (``lists``: its reply address reads reply lists)."""
        producer = self._check_breakers(topic)
        key = request.id.encode()
        value = request.to_bytes(reply_lists=lists)
        headers = [(HEADER_REQUEST_ID, key), _VERSION_HEADER]
        tracing.inject(headers)  # the request's trace context, when tracing is on
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        check_queued_size(size, self._max_bytes, self._limit_name)
        await self._produce(producer, topic, key, value, headers)

    async def _publish_grouped(self, topic: str, request: InferenceRequest) -> None:
        """Join the open group of ``request``'s topic, version and reply stream, or open one: its first request
        waits out the rest of this event-loop turn (no linger beyond it), then the group is sent."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = (topic, request.version, request.reply.target)
        group = self._groups.get(key)
        if group is not None:
            group.add(request, future)
            await future
            return
        group = self._groups[key] = _Group(topic)
        group.add(request, future)
        try:
            await asyncio.sleep(0)  # the requests published in this turn join
        except asyncio.CancelledError:
            self._close_group(key, group)
            if len(group.requests) > 1:  # the others still go, without this one
                future.cancel()
                self._spawn(self._send_group(group))
            raise
        self._close_group(key, group)
        if len(group.requests) == 1:  # alone: today's envelope, sent by its own caller
            await self._publish_one(topic, request, True)
            return
        self._spawn(self._send_group(group))
        await future

    def _close_group(self, key: tuple[str, str, str], group: _Group) -> None:
        if self._groups.get(key) is group:
            del self._groups[key]

    def _spawn(self, routine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(routine, name="fleet-gateway-kafka-batch")
        self._senders.add(task)
        task.add_done_callback(self._senders.discard)

    async def _send_group(self, group: _Group) -> None:
        """Send a group's requests (in records within the size limit) and settle each one's future."""
        try:
            await asyncio.gather(*(self._send_members(group.topic, part) for part in self._parts(group)))
        finally:  # cancelled (the publisher stops): nobody may wait forever
            for future in group.futures:
                if not future.done():
                    future.set_exception(BackendDownError("kafka", "the gateway is stopping"))

    def _parts(self, group: _Group) -> list[list[tuple[InferenceRequest, asyncio.Future[None]]]]:
        """The group in parts whose estimated record size is within the limit (a part of one may be over it:
        it gets its own 413)."""
        budget = self._max_bytes * 0.9
        parts: list[list[tuple[InferenceRequest, asyncio.Future[None]]]] = [[]]
        used = 0.0
        for request, future in zip(group.requests, group.futures, strict=True):
            size = _estimated_size(request)
            if parts[-1] and used + size > budget:
                parts.append([])
                used = 0.0
            parts[-1].append((request, future))
            used += size
        return parts

    async def _send_members(self, topic: str, members: list[tuple[InferenceRequest, asyncio.Future[None]]]) -> None:
        """Send ``members`` as one batch record (one alone: its own envelope) and settle their futures."""
        members = [(r, f) for r, f in members if not f.done()]  # its caller stopped waiting: not queued (as alone)
        if not members:
            return
        try:
            if len(members) == 1:
                await self._publish_one(topic, members[0][0], True)
            else:
                await self._publish_batch(topic, [r for r, _ in members])
        except PayloadTooLargeError as exc:
            if len(members) == 1:
                _settle(members, exc)
                return
            half = len(members) // 2  # the batch was over the limit: its halves go apart
            await asyncio.gather(self._send_members(topic, members[:half]), self._send_members(topic, members[half:]))
            return
        except FleetError as exc:
            _settle(members, exc)
            return
        _settle(members, None)

    async def _publish_batch(self, topic: str, requests: list[InferenceRequest]) -> None:
        """Several requests as one batch record (PayloadTooLargeError when it is over the size limit)."""
        producer = self._check_breakers(topic)
        first = requests[0]
        batch = InferenceRequestBatch(first.model, first.version, first.reply, tuple(requests))
        key = first.id.encode()
        value = batch.to_bytes(reply_lists=True)
        headers = [(HEADER_REQUEST_ID, key), _VERSION_HEADER, (HEADER_BATCH, str(len(requests)).encode())]
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        check_queued_size(size, self._max_bytes, self._limit_name)
        await self._produce(producer, topic, key, value, headers)

    async def _produce(
        self, producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        """Hand one record to the producer within ``timeout_s`` and wait for its delivery report."""
        if self._bulk_topics is not None:
            await self._ensure_topic(self._bulk_topics, topic)
        loop = asyncio.get_running_loop()
        budget_end = loop.time() + self._timeout_s
        if not producer.client.cluster.available_partitions_for_topic(topic):
            await self._topic_metadata(producer, topic)
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

    async def _topic_metadata(self, producer: AIOKafkaProducer, topic: str) -> None:
        """Wait (within ``timeout_s``) for ``topic``'s partitions and leaders: a topic without them is a problem
        of that topic, a wait after them one of this gateway's producer."""
        try:
            async with asyncio.timeout(self._timeout_s):
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
        if self._on_landed is not None:
            self._on_landed(topic, delivery.result().partition)

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


@dataclass(eq=False)
class _Group:
    """Requests for one topic, version and reply stream published in one event-loop turn, with their futures."""

    topic: str
    requests: list[InferenceRequest] = field(default_factory=list)
    futures: list[asyncio.Future[None]] = field(default_factory=list)

    def add(self, request: InferenceRequest, future: asyncio.Future[None]) -> None:
        self.requests.append(request)
        self.futures.append(future)


def _estimated_size(request: InferenceRequest) -> int:
    """About the bytes ``request`` adds to a batch record (tensor data and a margin for the rest)."""
    return 256 + len(request.id) + sum(64 + len(t.name) + 8 * len(t.shape) + len(t.data) for t in request.inputs)


def _settle(members: Sequence[tuple[InferenceRequest, asyncio.Future[None]]], error: FleetError | None) -> None:
    """Wake the callers still waiting: delivered (``error`` None) or failed (each gets its own copy)."""
    for _, future in members:
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(copy.copy(error))


def coalescable(record: ModelRecord) -> bool:
    """Whether a sync request for ``record`` may travel in a batch record: not for a text-generation model (its
    worker streams each request's tokens on its own)."""
    return record.task != TEXT_GENERATION


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a delivery report read (asyncio would log an unread failure)."""
    if not future.cancelled():
        future.exception()
