"""Reading a model's dead letters and replaying its requests (the library behind ``fleet dlq``).

Every model's dead letters share the namespace's topic (``Names.dlq_topic``); a model's are the records
whose ``fleet-model`` header names it (a record without one counts for the model of its request, when that
decodes). The topic is read from the beginning by a throwaway, group-less consumer until every partition's
position reaches the high watermark of its last fetch response (the log end that is right on every
broker; ListOffsets is not used). Nothing is ever unpickled: a record that is not a ``DeadLetter``
envelope, or whose request does not decode, is listed as undecodable and never replayed.

A replay re-publishes the stored request to its lane's request topic with ``attempt`` reset to 1, a
new ``created_ms`` and, when it had a deadline, the same time budget from now. Its stored result (the
error reply it got) is deleted first, so the new answer is the one kept; ``HINCRBY`` on
``names.dlq_replays_key(model)`` (field: the entry's ``partition:offset`` in the shared topic) records the
replay, which ``list`` shows, and a dead letter already replayed is skipped unless forced. A replay to the
bulk lane creates the model's bulk topic when it is missing (``schemas.topics.BulkTopics``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from common import text
from schemas import (
    DeadLetter,
    FleetSettings,
    InferenceRequest,
    Lane,
    Names,
    SchemaError,
    now_ms,
)
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_MODEL, HEADER_REPLAY, HEADER_REQUEST_ID
from schemas.topics import BulkTopics


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of a dead-letter topic: the letter and its request when they decode, else why not."""

    partition: int
    offset: int
    timestamp_ms: int
    letter: DeadLetter | None
    request: InferenceRequest | None
    problem: str = ""
    replays: int = 0

    @property
    def position(self) -> str:
        """``partition:offset``: the entry's identity in the topic (and its replay marker's field)."""
        return f"{self.partition}:{self.offset}"


def decode_entry(partition: int, offset: int, timestamp_ms: int, value: bytes | None) -> Entry:
    """Decode one dead-letter record (never raises: what does not decode is described)."""
    try:
        letter = DeadLetter.from_bytes(value or b"")
    except SchemaError as exc:
        return Entry(partition, offset, timestamp_ms, None, None, f"undecodable dead letter: {exc.message}")
    try:
        request = InferenceRequest.from_bytes(letter.value)
    except SchemaError as exc:
        return Entry(partition, offset, timestamp_ms, letter, None, f"undecodable request: {exc.message}")
    return Entry(partition, offset, timestamp_ms, letter, request)


def header_model(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """The model a dead-letter record's ``fleet-model`` header names (None without one)."""
    for key, value in headers or ():
        if key == HEADER_MODEL and value:
            return bytes(value).decode("utf-8", "replace")
    return None


def _of_model(entry: Entry, headers: Sequence[tuple[str, bytes]] | None, model: str) -> bool:
    named = header_model(headers)
    if named is not None:
        return named == model
    return entry.request is not None and entry.request.model == model


async def read_entries(settings: FleetSettings, names: Names, model: str, timeout_s: float = 30.0) -> list[Entry]:
    """Every dead letter of ``model`` in the namespace's dead-letter topic, oldest first per partition."""
    topic = names.dlq_topic
    consumer = AIOKafkaConsumer(
        **settings.kafka.client_kwargs(), group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    entries: list[Entry] = []
    try:
        partitions = consumer.partitions_for_topic(topic) if topic in await consumer.topics() else None
        tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        if not tps:
            return []
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + timeout_s
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            for records in batch.values():
                for r in records:
                    named = header_model(r.headers)
                    if named is not None and named != model:
                        continue  # another model's: not decoded
                    entry = decode_entry(r.partition, r.offset, r.timestamp, r.value)
                    if _of_model(entry, r.headers, model):
                        entries.append(entry)
            if await _caught_up(consumer, tps):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to its end within {timeout_s:g} s")
    finally:
        await consumer.stop()
    return entries


async def _caught_up(consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]) -> bool:
    for tp in tps:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


async def with_replays(redis: Any, names: Names, model: str, entries: Sequence[Entry]) -> list[Entry]:
    """``entries`` with their replay counts from Redis."""
    counts = await redis.hgetall(names.dlq_replays_key(model))
    seen = {text(key): int(value) for key, value in counts.items()}
    return [dataclasses.replace(e, replays=seen.get(e.position, 0)) for e in entries]


def replayed_request(request: InferenceRequest, at_ms: float) -> InferenceRequest:
    """The request as a replay sends it: first try again, created now, the same time budget as before."""
    deadline = None
    if request.deadline_ms is not None:
        deadline = at_ms + max(1.0, request.deadline_ms - request.created_ms)
    return dataclasses.replace(request, attempt=1, not_before_ms=None, created_ms=at_ms, deadline_ms=deadline)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one entry's replay did: ``sent`` to ``topic``, or skipped because of ``skipped``."""

    entry: Entry
    sent: bool
    topic: str = ""
    skipped: str = ""


async def replay(
    settings: FleetSettings, redis: Any, names: Names, model: str, entries: Iterable[Entry], *, force: bool = False
) -> list[ReplayResult]:
    """Re-publish the requests of ``entries`` (see the module docstring); one result per entry."""
    results: list[ReplayResult] = []
    bulk_topics = BulkTopics(settings.kafka, names)
    producer = AIOKafkaProducer(**settings.kafka.producer_kwargs())
    await producer.start()
    try:
        for entry in entries:
            if entry.request is None or entry.letter is None:
                results.append(ReplayResult(entry, False, skipped=entry.problem))
                continue
            if entry.replays and not force:
                results.append(ReplayResult(entry, False, skipped=f"replayed {entry.replays}x already (--force)"))
                continue
            lane = names.lane_of_topic(model, entry.letter.topic) or Lane.INTERACTIVE
            topic = names.request_topic(model, lane)
            request = replayed_request(entry.request, now_ms())
            count = int(await redis.hincrby(names.dlq_replays_key(model), entry.position, 1))
            await redis.delete(names.result_key(request.id))
            key = request.id.encode()
            headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, b"1"), (HEADER_REPLAY, str(count).encode())]
            await bulk_topics.ensure(topic)
            await producer.send_and_wait(topic, request.to_bytes(), key=key, headers=headers)
            results.append(ReplayResult(dataclasses.replace(entry, replays=count), True, topic))
    finally:
        await producer.stop()
    return results
