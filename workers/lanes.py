"""One priority lane of one model: its consumer group and its request topic.

Each lane has its own consumer in its own group (``Names.worker_group(model, lane)``), so records a
lane holds in aiokafka's prefetch buffer never hold back the other lane's fetches: bulk records waiting
in memory do not delay the next interactive fetch. ``take()`` returns decoded records. Retries wait on
the namespace's shared retry topics, not here: the gateways' retry relay (`gateway.retry_relay`) puts
each one back on its model's request topic once it is due.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from common.fetch_wake import guard_fetch_routine
from schemas import KafkaSettings, Lane, Names

from .errors import BackendDownError, start_kafka_client
from .handler import Fetched, decode

log = logging.getLogger("fleet.workers")


class LaneConsumer:
    """The consumer of one lane of one model (its request topic, in the lane's group)."""

    def __init__(
        self, model: str, lane: Lane, names: Names, kafka: KafkaSettings, commit_interval_ms: int = 0
    ) -> None:
        self.model = model
        self.lane = lane
        self._names = names
        self._kafka = kafka
        self.request_topic = names.request_topic(model, lane)
        #: Where this lane's failed requests wait for their next try (shared by every model of the namespace).
        self.retry_topic = names.retry_topic(lane)
        self._consumer: AIOKafkaConsumer | None = None
        #: Records taken from Kafka but not yet run (when a wait returned both lanes' records).
        self.carried: list[Fetched] = []
        self._partitions: list[str] = []
        self.assigned_once = False
        #: Sends the offsets of the rounds answered so far (one routine per lane, so commits land in order).
        self._commit: asyncio.Task[None] | None = None
        #: Offsets of rounds answered and not sent yet (next offset per partition), merged into one commit.
        self._pending: dict[TopicPartition, int] = {}
        self._commit_interval_s = max(0, commit_interval_ms) / 1000
        self._last_commit = 0.0  # monotonic time the last commit was sent
        self._flush_now = asyncio.Event()

    async def start(self, listener: ConsumerRebalanceListener) -> None:
        """Join the lane's group; raises BackendDownError when Kafka is unreachable."""
        consumer = AIOKafkaConsumer(**self._kafka.consumer_kwargs(self._names.worker_group(self.model, self.lane)))
        consumer.subscribe([self.request_topic], listener=listener)
        await start_kafka_client(consumer, self._kafka.bootstrap)
        guard_fetch_routine(consumer)  # no sleep on a fetch already answered (see common.fetch_wake)
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

    def note_assignment(self, assigned: Any) -> None:
        """Record the partitions the group gave this lane."""
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
    async def take(self, timeout_ms: int, max_records: int) -> list[Fetched]:
        """Records carried over first, else up to ``max_records`` fetched (waiting at most ``timeout_ms``)."""
        if self.carried:
            taken, self.carried = self.carried[:max_records], self.carried[max_records:]
            return taken
        data = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return self.sort(data)

    @staticmethod
    def sort(data: dict[TopicPartition, Sequence[Any]]) -> list[Fetched]:
        """Decode fetched records, partition by partition in offset order."""
        return [item for records in data.values() for record in records for item in decode(record)]

    def set_fetch_wait(self, wait_ms: int) -> None:
        """Change the fetch wait of this lane's consumer (see ``ModelConsumer._set_idle``).

        aiokafka reads the wait from its fetcher for every request and has no public setter: the
        attribute is only touched when present.
        """
        fetcher = getattr(self._consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = wait_ms

    async def commit_soon(self, fetched: Sequence[Fetched]) -> None:
        """Queue the offsets just past ``fetched`` (a round whose replies are stored) for the lane's next commit,
        without waiting for the broker.

        One routine per lane sends them, at most one commit in flight and at most one per ``commit_interval_ms``:
        the offsets of the rounds answered meanwhile are merged into it (per partition the furthest, and rounds
        come here in order), so commits land in order and never pass a round not answered. ``flush_commits()``
        (rebalance, stop) sends what is queued at once and waits for it. A commit lost to a crash only means
        redelivery, which the result markers make harmless.
        """
        for tp, offset in _offsets(fetched).items():
            self._pending[tp] = max(self._pending.get(tp, 0), offset)
        if self._pending and (self._commit is None or self._commit.done()):
            if self._commit is not None:
                await self._commit  # done: re-raises what ended it (a failed commit only logs)
            self._commit = asyncio.create_task(self._send_pending(), name=f"commit-{self.model}-{self.lane.value}")

    async def _send_pending(self) -> None:
        """Send the queued offsets, each commit ``commit_interval_ms`` after the one before (or at once on a
        flush), until nothing is queued."""
        loop = asyncio.get_running_loop()
        while self._pending:
            wait_s = self._last_commit + self._commit_interval_s - loop.time()
            if wait_s > 0 and not self._flush_now.is_set():
                try:
                    await asyncio.wait_for(self._flush_now.wait(), wait_s)
                except TimeoutError:
                    pass
            offsets, self._pending = self._pending, {}
            self._last_commit = loop.time()
            await self._send(offsets)

    async def flush_commits(self) -> None:
        """Send the queued offsets now and wait until every commit of this lane has landed (or failed)."""
        task = self._commit
        if task is None:
            return
        self._flush_now.set()
        try:
            await task
        finally:
            self._flush_now.clear()
            if self._commit is task:
                self._commit = None

    async def commit(self, fetched: Sequence[Fetched]) -> None:
        """Commit the offsets just past ``fetched`` (records of this lane) now; a failed commit only logs."""
        await self._send(_offsets(fetched))

    async def _send(self, offsets: dict[TopicPartition, int]) -> None:
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


def _offsets(fetched: Sequence[Fetched]) -> dict[TopicPartition, int]:
    """The offset to commit per partition once ``fetched`` is answered (just past its furthest record)."""
    offsets: dict[TopicPartition, int] = {}
    for item in fetched:
        tp = TopicPartition(item.record.topic, item.record.partition)
        offsets[tp] = max(offsets.get(tp, 0), item.next_offset)
    return offsets
