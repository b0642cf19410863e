"""One priority lane of one model: its consumer group, its request and retry topics, held-back retries.

Each lane has its own consumer in its own group (``Names.worker_group(model, lane)``), so records a
lane holds in aiokafka's prefetch buffer never hold back the other lane's fetches: bulk records waiting
in memory do not delay the next interactive fetch. ``take()`` returns decoded records; a retry whose
``not_before_ms`` is still ahead is not returned: its partition is rewound to it and paused until it is
due (head-of-line: retries on one partition come out in order), so nothing is committed past it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from schemas import KafkaSettings, Lane, Names, now_ms

from .errors import BackendDownError, start_kafka_client
from .handler import Fetched, decode

log = logging.getLogger("fleet.workers")


class LaneConsumer:
    """The consumer of one lane of one model (request topic + retry topic, one group)."""

    def __init__(self, model: str, lane: Lane, names: Names, kafka: KafkaSettings) -> None:
        self.model = model
        self.lane = lane
        self._names = names
        self._kafka = kafka
        self.request_topic, self.retry_topic = names.lane_topics(model, lane)
        self._consumer: AIOKafkaConsumer | None = None
        #: Partitions of the retry topic paused until a held-back retry is due (monotonic seconds).
        self._held: dict[TopicPartition, float] = {}
        #: Records taken from Kafka but not yet run (when a wait returned both lanes' records).
        self.carried: list[Fetched] = []
        self._partitions: list[str] = []
        self.assigned_once = False
        #: The commit in flight (at most one per lane, so commits land in order).
        self._commit: asyncio.Task[None] | None = None

    async def start(self, listener: ConsumerRebalanceListener) -> None:
        """Join the lane's group; raises BackendDownError when Kafka is unreachable."""
        consumer = AIOKafkaConsumer(**self._kafka.consumer_kwargs(self._names.worker_group(self.model, self.lane)))
        consumer.subscribe([self.request_topic, self.retry_topic], listener=listener)
        await start_kafka_client(consumer, self._kafka.bootstrap)
        self._consumer = consumer

    async def stop(self) -> None:
        """Wait for the commit in flight, then leave the group (partitions move without a session timeout)."""
        await self.flush_commits()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.stop()
            except KafkaError as exc:
                log.warning("model %s %s lane: leaving the group failed: %s", self.model, self.lane.value, exc)

    @property
    def consumer(self) -> AIOKafkaConsumer:
        """The aiokafka consumer (raises when not started)."""
        if self._consumer is None:
            raise BackendDownError(f"model {self.model} {self.lane.value} lane: consumer not started")
        return self._consumer

    # assignment -----------------------------------------------------------------
    def forget(self) -> None:
        """A rebalance: positions restart from the committed offsets, so records in memory are dropped."""
        self.carried.clear()
        self._held.clear()

    def note_assignment(self, assigned: Any) -> None:
        """Record the partitions the group gave this lane."""
        self._held.clear()
        self._partitions = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)
        self.assigned_once = True
        log.info(
            "model %s %s lane: assigned %s", self.model, self.lane.value, ",".join(self._partitions) or "no partitions"
        )

    @property
    def partitions(self) -> list[str]:
        """``topic:partition`` of the current assignment."""
        return list(self._partitions)

    # fetching --------------------------------------------------------------------
    def next_release_s(self) -> float | None:
        """Seconds until the first held-back retry is due (None when none is held)."""
        if not self._held:
            return None
        return max(0.0, min(self._held.values()) - time.monotonic())

    def release_due(self) -> None:
        """Resume the retry partitions whose held-back record is due."""
        if not self._held or self._consumer is None:
            return
        now = time.monotonic()
        due = [tp for tp, at in self._held.items() if at <= now]
        for tp in due:
            del self._held[tp]
        if due:
            self._consumer.resume(*due)

    async def take(self, timeout_ms: int, max_records: int) -> list[Fetched]:
        """Records carried over first, else up to ``max_records`` fetched (waiting at most ``timeout_ms``)."""
        if self.carried:
            taken, self.carried = self.carried[:max_records], self.carried[max_records:]
            return taken
        data = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return self.sort(data)

    def sort(self, data: dict[TopicPartition, Sequence[Any]]) -> list[Fetched]:
        """Decode fetched records; hold back retries that are not due yet (rewind and pause their partition)."""
        taken: list[Fetched] = []
        now = now_ms()
        for tp, records in data.items():
            for record in records:
                item = decode(record)
                request = item.request
                if tp.topic == self.retry_topic and request is not None and not request.due(now):
                    self._hold(tp, record.offset, (request.not_before_ms or now) - now)
                    break  # the rest of this partition comes again after the seek
                taken.append(item)
        return taken

    def _hold(self, tp: TopicPartition, offset: int, wait_ms: float) -> None:
        consumer = self.consumer
        try:
            consumer.seek(tp, offset)
        except IllegalStateError:  # the partition was revoked meanwhile: its new owner reads it
            return
        consumer.pause(tp)
        self._held[tp] = time.monotonic() + wait_ms / 1000

    def set_fetch_wait(self, wait_ms: int) -> None:
        """Change the fetch wait of this lane's consumer (see ``ModelConsumer._set_idle``).

        aiokafka reads the wait from its fetcher for every request and has no public setter: the
        attribute is only touched when present.
        """
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = wait_ms

    async def commit_soon(self, fetched: Sequence[Fetched]) -> None:
        """Start committing ``fetched`` without waiting for the broker (the next round overlaps the commit).

        The previous commit of this lane is awaited first, so at most one is in flight and they land in
        order; ``flush_commits()`` (rebalance, stop) waits for the last one. A commit lost to a crash
        only means redelivery, which the result markers make harmless.
        """
        await self.flush_commits()
        self._commit = asyncio.create_task(self.commit(fetched), name=f"commit-{self.model}-{self.lane.value}")

    async def flush_commits(self) -> None:
        """Wait for the commit in flight, if any."""
        task, self._commit = self._commit, None
        if task is not None:
            await task

    async def commit(self, fetched: Sequence[Fetched]) -> None:
        """Commit the offsets just past ``fetched`` (records of this lane); a failed commit only logs."""
        offsets: dict[TopicPartition, int] = {}
        for item in fetched:
            tp = TopicPartition(item.record.topic, item.record.partition)
            offsets[tp] = max(offsets.get(tp, 0), item.record.offset + 1)
        consumer = self._consumer
        if consumer is None or not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partitions: the new owner gets the records again, and the result
            # markers stop a second answer reaching the clients.
            log.warning(
                "model %s %s lane: commit failed (%s); the records will be redelivered",
                self.model,
                self.lane.value,
                exc,
            )
