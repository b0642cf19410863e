"""Committing and reading offsets under any consumer group from one Kafka client (the pool worker's).

A pool worker consumes by manual assignment, in no group, yet commits each model's offsets under that
model's own group (``Names.worker_group``), so the lag collector, ``fleet dlq``, KEDA's Kafka scaler and
the one-process-per-model mode see the same offsets. Kafka accepts a commit with generation -1 (a
"simple consumer" commit) for a group without active members. The same client reads the committed
offsets (a newly owned partition starts there) and the topics' partition counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.commit import OffsetCommitRequest, OffsetFetchRequest
from aiokafka.protocol.metadata import MetadataRequest

from schemas import KafkaSettings

from .errors import BackendDownError

log = logging.getLogger("fleet.workers")

#: Coordinator type of consumer groups in FindCoordinator.
_GROUP = 0
#: Topics per metadata request.
_METADATA_BATCH = 1000


class GroupOffsets:
    """One Kafka client that commits and fetches offsets for many groups and reads partition counts."""

    def __init__(self, kafka: KafkaSettings) -> None:
        kwargs = kafka.client_kwargs()
        self._client = AIOKafkaClient(**kwargs)
        self._bootstrap = kafka.bootstrap
        self._coordinators: dict[str, int] = {}

    @property
    def client(self) -> AIOKafkaClient:
        """The underlying client (one of the pool worker's fixed set of Kafka clients)."""
        return self._client

    async def start(self) -> None:
        """Connect (BackendDownError when Kafka is unreachable)."""
        try:
            await self._client.bootstrap()
        except KafkaError as exc:
            await self._client.close()
            raise BackendDownError(f"Kafka unavailable at {self._bootstrap}: {exc}") from exc

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.close()

    async def partitions(self, topics: Iterable[str]) -> dict[str, int]:
        """Partition count of each of ``topics`` that exists (missing topics are left out, never auto-created)."""
        wanted = sorted(set(topics))
        counts: dict[str, int] = {}
        for start in range(0, len(wanted), _METADATA_BATCH):
            node = self._client.get_random_node()
            request = MetadataRequest(wanted[start : start + _METADATA_BATCH], allow_auto_topic_creation=False)
            response = await self._client.send(node, request)
            for entry in response.topics:
                error_code, topic = entry[0], entry[1]
                found = next((field for field in entry[2:] if isinstance(field, list)), [])
                if not error_code and found:
                    counts[topic] = len(found)
        return counts

    async def _coordinator(self, group: str) -> int:
        node = self._coordinators.get(group)
        if node is None:
            node = self._coordinators[group] = await self._client.coordinator_lookup(_GROUP, group)
        return node

    async def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) under ``group``; raises KafkaError."""
        by_topic: dict[str, list[tuple[int, int, str]]] = {}
        for tp, offset in offsets.items():
            by_topic.setdefault(tp.topic, []).append((tp.partition, offset, ""))
        request = OffsetCommitRequest(
            group,
            OffsetCommitRequest.DEFAULT_GENERATION_ID,
            "",
            OffsetCommitRequest.DEFAULT_RETENTION_TIME,
            list(by_topic.items()),
        )
        try:
            response = await self._client.send(await self._coordinator(group), request)
        except KafkaError:
            self._coordinators.pop(group, None)  # it may have moved: look it up again next time
            raise
        for topic, partitions in response.topics:
            for partition, error_code in partitions:
                if error_code:
                    self._coordinators.pop(group, None)
                    raise for_code(error_code)(f"commit of {topic}:{partition} for group {group}")

    async def committed(self, group: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The offset committed under ``group`` for each partition (None: nothing committed); raises KafkaError."""
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        if not by_topic:
            return {}
        request = OffsetFetchRequest(group, list(by_topic.items()))
        try:
            response = await self._client.send(await self._coordinator(group), request)
        except KafkaError:
            self._coordinators.pop(group, None)
            raise
        found: dict[TopicPartition, int | None] = {}
        for topic, answered in response.topics:
            for partition, offset, _metadata, error_code in answered:
                if error_code:
                    raise for_code(error_code)(f"offset of {topic}:{partition} for group {group}")
                found[TopicPartition(topic, partition)] = offset if offset >= 0 else None
        return found
