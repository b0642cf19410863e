"""The retry relay: every gateway puts due retries back on their models' request topics.

A worker whose batch failed transiently re-publishes each request to its lane's shared retry topic
(``Names.retry_topic(lane)``: one per namespace and lane, ``FLEET_KAFKA_RETRY_PARTITIONS`` partitions) with
headers naming the model, the version and when it is due (`workers.retries.retry_headers`). The gateways run
one consumer each in the group ``Names.retry_relay_group`` over both retry topics (gateways always run, so
retries flow even while a model has no worker: the record on its request topic is lag that scales it up).

Per fetched partition, in offset order:

* a record not due yet is held: the partition is rewound to it and paused until it is due (head of line:
  a retry waits at most its own delay plus the delays still to run of the retries ahead of it on its partition);
* a due record of a registered model is produced unchanged (value, key, headers) to the model's request
  topic of the lane (`Names.request_topic`);
* a due record of a model that is no longer registered becomes a dead letter (MODEL_NOT_FOUND) on the
  namespace's dead-letter topic (`Names.dlq_topic`, headers: the model and version), so `fleet dlq` shows it;
* a record that names no model (no ``fleet-model`` header, and it does not decode as a request) is dropped
  with an error log line: there is no model to file it under.

Offsets are committed only after the broker acknowledged every produce before them (at least once: after a
crash or a rebalance a retry can be relayed twice, and the first result stored wins). A produce that fails
rewinds its partition to that record and tries again after a backoff; so does a Redis outage (the
registry cannot say whether the model exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from redis.exceptions import RedisError

from common import Backoff, BackoffPolicy, pause, supervise
from schemas import (
    DeadLetter,
    ErrorCode,
    FleetError,
    FleetSettings,
    InferenceRequest,
    Lane,
    Names,
    SchemaError,
    check_model_name,
    now_ms,
)
from schemas.constants import (
    CONTENT_TYPE_MSGPACK,
    HEADER_CONTENT_TYPE,
    HEADER_MODEL,
    HEADER_NOT_BEFORE,
    HEADER_VERSION,
)
from schemas.eventloop import AsyncService
from schemas.topics import ensure_shared_topics

log = logging.getLogger("fleet.gateway")

#: Longest the relay waits for records before it checks its held partitions and whether it should stop.
_POLL_MS = 200
#: Fetch wait of the relay's consumer: an idle relay asks the broker ten times a second, not a hundred.
_FETCH_WAIT_MS = 100
_MAX_RECORDS = 500
#: Seconds a model found in the registry is trusted to exist (one SISMEMBER per model and interval).
_KNOWN_TTL_S = 5.0
#: Pauses between tries to get past a Kafka or Redis outage (connect, produce, registry lookup).
_OUTAGE = BackoffPolicy(first_s=0.1, max_s=2.0)
#: Longest ``stop()`` waits for the batch in hand before it cancels it (its records are relayed again).
_STOP_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class RetryRoute:
    """Where a retry record goes: its model, and when it is due (epoch ms; 0 = now)."""

    model: str
    not_before_ms: float


def route_of(record: Any) -> RetryRoute | None:
    """The route of a retry record from its headers; from its envelope when they are missing or bad (a record
    not written by a worker); None when neither names a model."""
    headers = {str(k): bytes(v or b"") for k, v in (record.headers or ())}
    try:
        model = check_model_name(headers[HEADER_MODEL].decode())
        return RetryRoute(model, float(headers[HEADER_NOT_BEFORE].decode()))
    except (KeyError, UnicodeDecodeError, ValueError, SchemaError):
        pass
    try:
        request = InferenceRequest.from_bytes(bytes(record.value or b""))
        return RetryRoute(check_model_name(request.model), request.not_before_ms or 0.0)
    except (SchemaError, FleetError):
        return None


async def _started(client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
    """Start ``client``; one whose start fails or is cancelled is stopped: its routines started so far (metadata
    sync, fetcher, group coordination) would otherwise run on, reconnecting to the cluster for good."""
    try:
        await client.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.shield(client.stop())
        raise


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, relay: RetryRelay) -> None:
        self._relay = relay

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # The batch in hand is produced and committed before the partitions move (fewer records relayed twice).
        async with self._relay.batch_lock:
            self._relay.forget(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("retry relay: assigned %s", ",".join(f"{tp.topic}:{tp.partition}" for tp in sorted(assigned)))
        self._relay.running.set()


class RetryRelay(AsyncService):
    """Relays due retries of the namespace to their request topics; ``start()``/``stop()`` with the gateway."""

    def __init__(self, fleet: FleetSettings, names: Names, redis: Any, owner: str) -> None:
        self._fleet = fleet
        self._names = names
        self._redis = redis
        self._owner = owner
        self._lanes = {names.retry_topic(lane): lane for lane in Lane}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._held: dict[TopicPartition, float] = {}  # paused until (monotonic s)
        self._known: dict[str, float] = {}  # registered model -> trusted until (monotonic s)
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batch_lock = asyncio.Lock()
        #: Set once the relay's group gave it an assignment (possibly empty): it relays from then on.
        self.running = asyncio.Event()

    async def start(self) -> None:
        """Start the relay routine (it connects in the background: a gateway starts while Kafka is down)."""
        if self._task is not None:
            raise RuntimeError("the retry relay was started already")
        self._task = asyncio.create_task(
            supervise("retry relay", self._relay_routine, log, stop=self._closing), name="retry-relay"
        )

    async def stop(self) -> None:
        """Finish the batch in hand (bounded), then leave the group and close the clients; idempotent."""
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=_STOP_WAIT_S)
            if not done:
                log.warning("retry relay: batch not relayed after %gs; cancelled (relayed again later)", _STOP_WAIT_S)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        for client in (consumer, producer):
            if client is not None:
                with contextlib.suppress(KafkaError):
                    await client.stop()

    async def wait_running(self, timeout_s: float) -> None:
        """Wait until the relay's group gave it an assignment (TimeoutError after ``timeout_s``)."""
        await asyncio.wait_for(self.running.wait(), timeout_s)

    def forget(self, revoked: Any) -> None:
        """Partitions taken away: their held state goes (the new owner starts at the committed offset)."""
        for tp in revoked:
            self._held.pop(tp, None)

    # the routine -------------------------------------------------------------------------------------------------
    async def _relay_routine(self) -> None:
        consumer = await self._connect()
        if consumer is None:
            return
        # After a crash, records fetched but not relayed are read again from the committed offsets.
        with contextlib.suppress(IllegalStateError, KafkaError):
            if consumer.assignment():
                await consumer.seek_to_committed()
        self._held.clear()
        while not self._closing.is_set():
            self._release_due(consumer)
            poll_ms = _POLL_MS
            if self._held:
                poll_ms = max(1, min(poll_ms, int((min(self._held.values()) - time.monotonic()) * 1000) + 1))
            try:
                data = await consumer.getmany(timeout_ms=poll_ms, max_records=_MAX_RECORDS)
            except KafkaError as exc:
                log.warning("retry relay: fetch failed (%s)", exc)
                await asyncio.sleep(_OUTAGE.first_s)
                continue
            if data:
                async with self.batch_lock:
                    await self._relay(consumer, data)

    async def _connect(self) -> AIOKafkaConsumer | None:
        """Create the retry topics and join the group, trying again through outages; None when stopped first."""
        backoff = Backoff(_OUTAGE)
        while self._consumer is None:
            kafka = self._fleet.kafka
            try:
                await ensure_shared_topics(kafka, self._names)
                if self._producer is None:
                    producer = AIOKafkaProducer(**kafka.producer_kwargs())
                    await _started(producer)
                    self._producer = producer
                consumer = AIOKafkaConsumer(
                    **{**kafka.consumer_kwargs(self._names.retry_relay_group), "fetch_max_wait_ms": _FETCH_WAIT_MS}
                )
                consumer.subscribe(list(self._lanes), listener=_Rebalance(self))
                await _started(consumer)
                self._consumer = consumer
            except (KafkaError, FleetError, OSError) as exc:
                wait = backoff.next()
                log.warning("retry relay: Kafka not reachable (%s); trying again in %.2fs", exc, wait)
                if await pause(wait, self._closing):
                    return None
        return self._consumer

    def _release_due(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        for tp in [tp for tp, at in self._held.items() if at <= now]:
            del self._held[tp]
            with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                consumer.resume(tp)

    def _hold(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, wait_s: float) -> None:
        """Fetch ``tp`` again from ``offset`` after ``wait_s`` seconds."""
        try:
            consumer.seek(tp, offset)
            consumer.pause(tp)
        except IllegalStateError:  # revoked meanwhile: its new owner reads it from the committed offset
            return
        self._held[tp] = time.monotonic() + max(0.0, wait_s)

    async def _relay(self, consumer: AIOKafkaConsumer, data: dict[TopicPartition, Sequence[Any]]) -> None:
        """Produce the due records of ``data``, hold the rest, commit what the broker acknowledged."""
        now = now_ms()
        due: dict[TopicPartition, list[tuple[Any, RetryRoute | None]]] = {}
        for tp, records in data.items():
            for record in records:
                route = route_of(record)
                if route is not None and route.not_before_ms > now:
                    self._hold(consumer, tp, record.offset, (route.not_before_ms - now) / 1000)
                    break  # the rest of this partition comes again after the seek
                due.setdefault(tp, []).append((record, route))
        if not due:
            return
        try:
            registered = await self._registered({r.model for items in due.values() for _, r in items if r})
        except RedisError as exc:
            log.warning("retry relay: registry not reachable (%s); trying again", exc)
            for tp, items in due.items():
                self._hold(consumer, tp, items[0][0].offset, _OUTAGE.max_s)
            return
        offsets: dict[TopicPartition, int] = {}
        for tp, items in due.items():
            sends = [await self._send(tp, record, route, registered) for record, route in items]
            outcomes = await asyncio.gather(*(s for s in sends if s is not None), return_exceptions=True)
            failures = iter(outcomes)
            for (record, _), send in zip(items, sends, strict=True):
                failure = next(failures) if send is not None else None
                if isinstance(failure, BaseException):
                    if not isinstance(failure, KafkaError):
                        raise failure
                    where = f"{tp.topic}:{tp.partition}@{record.offset}"
                    log.warning("retry relay: %s not relayed yet: %s", where, failure)
                    self._hold(consumer, tp, record.offset, _OUTAGE.max_s)
                    break
                offsets[tp] = record.offset + 1
        if offsets:
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:  # a rebalance took them: the new owner relays them again
                log.warning("retry relay: commit failed (%s); those retries will be relayed again", exc)

    async def _send(
        self, tp: TopicPartition, record: Any, route: RetryRoute | None, registered: set[str]
    ) -> asyncio.Future[Any] | None:
        """Start producing ``record`` where it belongs (a future of the ack), or None when it is dropped."""
        producer = self._producer
        assert producer is not None
        where = f"{tp.topic}:{tp.partition}@{record.offset}"
        if route is None:
            log.error("retry relay: dropped %s: it names no model (no fleet-model header, not a request)", where)
            return None
        headers = list(record.headers or ())
        try:
            if route.model in registered:
                topic = self._names.request_topic(route.model, self._lanes[tp.topic])
                sent: asyncio.Future[Any] = await producer.send(topic, record.value, key=record.key, headers=headers)
                return sent
            reason = f"model {route.model!r} is no longer registered; its retry was not run"
            dlq = self._names.dlq_topic
            letter = DeadLetter(
                code=ErrorCode.MODEL_NOT_FOUND,
                reason=reason,
                topic=tp.topic,
                partition=tp.partition,
                offset=record.offset,
                value=bytes(record.value or b""),
                key=None if record.key is None else bytes(record.key),
                headers=tuple((str(k), bytes(v or b"")) for k, v in headers),
                worker=f"gateway:{self._owner}",
            )
            log.warning("retry relay: dead letter %s -> %s: %s", where, dlq, reason)
            filed = [(HEADER_CONTENT_TYPE, CONTENT_TYPE_MSGPACK.encode()), (HEADER_MODEL, route.model.encode())]
            filed += [(k, v) for k, v in headers if k == HEADER_VERSION]
            filing: asyncio.Future[Any] = await producer.send(dlq, letter.to_bytes(), key=letter.key, headers=filed)
            return filing
        except KafkaError as exc:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    async def _registered(self, models: set[str]) -> set[str]:
        """The models of ``models`` that are registered (RedisError when the registry cannot be read)."""
        now = time.monotonic()
        ask = sorted(m for m in models if self._known.get(m, 0.0) <= now)
        if ask:
            async with self._redis.pipeline(transaction=False) as pipe:
                for model in ask:
                    pipe.sismember(self._names.models_key, model)
                found = await pipe.execute()
            for model, member in zip(ask, found, strict=True):
                if member:
                    self._known[model] = now + _KNOWN_TTL_S
                else:
                    self._known.pop(model, None)
        return {m for m in models if self._known.get(m, 0.0) > now}
