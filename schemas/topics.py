"""Creating models' topics with their intended partition count (never rely on auto-creation).

``ensure_topics_for_models`` creates the topics of many models with one admin client, one topic listing and one
CreateTopics request per batch of topics (``fleet models apply``); ``ensure_model_topics`` is the one-model form.
Both also create the namespace's two shared retry topics (``Names.retry_topics``, ``kafka.retry_partitions`` each)
and its shared dead-letter topic (``Names.dlq_topic``, ``kafka.dlq_partitions``) when they are missing
(``shared_topics``); ``ensure_shared_topics`` creates only those (the gateways' retry relay, at its start).

A model's topics at registration are only its request topic (``Names.model_topics``). Its bulk-lane topic is
created on first use: by whatever publishes the first bulk request (``BulkTopics`` in the gateway's publisher
and the producer client; ``ensure_bulk_topic``), with as many partitions as the request topic.

New topics get ``kafka.replication_factor`` replicas, or when it is 0 (the default) the cluster's own choice: 3 on a
cluster of 3 brokers or more, else one per broker (``replication_factor``, from the Metadata answer's brokers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import InvalidReplicationFactorError, KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.protocol.metadata import MetadataRequest

from .errors import ErrorCode, FleetError
from .names import Names
from .settings import KafkaSettings

log = logging.getLogger("fleet.schemas")

#: Topics per CreateTopics request of ``ensure_topics_for_models``: a broker's time to create a topic can grow with
#: the topics it has (the embedded broker takes 2-4 s per 250 topics once it holds 5,000), so one request stays small.
CREATE_TOPICS_BATCH = 250
#: Least request timeout of the admin client there: listing 5,000 topics takes ~4 s on the embedded broker.
ADMIN_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class TopicsOutcome:
    """What ``ensure_topics_for_models`` did: topics created per model, and models whose topics are missing."""

    created: dict[str, tuple[str, ...]] = field(default_factory=dict)
    failed: dict[str, FleetError] = field(default_factory=dict)


async def ensure_model_topics(
    kafka: KafkaSettings,
    names: Names,
    model: str,
    partitions: int | None = None,
    *,
    bulk: bool = False,
    admin_client: Callable[..., Any] = AIOKafkaAdminClient,
) -> None:
    """Create the topics of ``model`` (its request topic, its bulk topic too when ``bulk``; and the namespace's
    shared topics) if they do not exist yet.

    Producing to a missing topic would auto-create it with the broker's default partition count,
    which silently caps the model's useful workers; so registration creates them explicitly. A topic the
    broker refuses to create (other than "already exists": another process won the race) raises a
    FleetError that names the topic and the broker's reason (BACKEND_UNAVAILABLE when the error is
    retriable, INTERNAL otherwise). ``admin_client`` builds the admin client (a seam for tests).
    """
    outcome = await ensure_topics_for_models(kafka, names, {model: partitions}, admin_client=admin_client)
    if model in outcome.failed:
        raise outcome.failed[model]
    if bulk:
        await ensure_bulk_topic(kafka, names, model, admin_client=admin_client)


async def ensure_topics_for_models(
    kafka: KafkaSettings,
    names: Names,
    partitions: Mapping[str, int | None],
    *,
    batch_topics: int = CREATE_TOPICS_BATCH,
    admin_client: Callable[..., Any] = AIOKafkaAdminClient,
) -> TopicsOutcome:
    """Create the missing topics of every model in ``partitions`` (model -> partitions of its new topics, None
    for ``kafka.partitions``) with one admin client, one topic listing and one CreateTopics per ``batch_topics``.

    A topic the broker refuses (as in ``ensure_model_topics``) fails its model(s) in ``failed``; the other
    models' topics are still created. A broker that cannot be reached at all raises FleetError(BACKEND_UNAVAILABLE).
    The shared retry topics are created too when missing; one refused fails every model of the call (their
    retries could not be stored), and they are listed in no model's ``created``.
    """
    owners: dict[str, list[str]] = {}  # topic -> the models it belongs to (a shared topic has several)
    counts: dict[str, int] = {}
    for model, count in partitions.items():
        for topic in names.model_topics(model):
            owners.setdefault(topic, []).append(model)
            counts[topic] = max(counts.get(topic, 0), count or kafka.partitions)
    shared = shared_topics(kafka, names)
    for topic, count in shared.items():
        owners[topic] = list(partitions)
        counts[topic] = count
    missing, refused = await _create_missing(kafka, counts, batch_topics, admin_client)
    outcome = TopicsOutcome()
    for topic, error in refused.items():
        for model in owners[topic]:
            outcome.failed.setdefault(model, error)
    created: dict[str, list[str]] = {}
    for topic in missing:
        if topic not in refused and topic not in shared:
            for model in owners[topic]:
                created.setdefault(model, []).append(topic)
    outcome.created.update({model: tuple(topics) for model, topics in created.items()})
    if missing:
        log.info("created %d topics of %d models", len(missing) - len(refused), len(created))
    return outcome


def shared_topics(kafka: KafkaSettings, names: Names) -> dict[str, int]:
    """The namespace's shared topics -> their partition counts: both retry topics and the dead-letter topic."""
    return {**dict.fromkeys(names.retry_topics(), kafka.retry_partitions), names.dlq_topic: kafka.dlq_partitions}


async def ensure_shared_topics(
    kafka: KafkaSettings, names: Names, *, admin_client: Callable[..., Any] = AIOKafkaAdminClient
) -> None:
    """Create the namespace's shared topics (``shared_topics``) if they do not exist yet (FleetError as
    ``ensure_model_topics`` when the broker refuses one or cannot be reached)."""
    _, refused = await _create_missing(kafka, shared_topics(kafka, names), CREATE_TOPICS_BATCH, admin_client)
    if refused:
        raise next(iter(refused.values()))


async def _create_missing(
    kafka: KafkaSettings, counts: Mapping[str, int], batch_topics: int, admin_client: Callable[..., Any]
) -> tuple[list[str], dict[str, FleetError]]:
    """Create the topics of ``counts`` (topic -> partitions) that do not exist; returns (the missing ones, a
    FleetError per topic the broker refused)."""
    if batch_topics < 1:
        raise ValueError("batch_topics must be >= 1")
    refused: dict[str, FleetError] = {}
    unsure: dict[str, FleetError] = {}  # topics of a request that raised: the broker may have created them
    kwargs = kafka.client_kwargs()
    kwargs["request_timeout_ms"] = max(kafka.request_timeout_ms, ADMIN_TIMEOUT_MS)
    admin = admin_client(**kwargs)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [topic for topic in counts if topic not in existing]
        replicas = await replication_factor(kafka) if missing else 0
        for start in range(0, len(missing), batch_topics):
            chunk = missing[start : start + batch_topics]
            new = [NewTopic(t, num_partitions=counts[t], replication_factor=replicas) for t in chunk]
            try:
                response = await admin.create_topics(new)
            except TopicAlreadyExistsError:  # another process won the race for some of them
                for topic in chunk:
                    unsure[topic] = FleetError(
                        f"Kafka did not create topic {topic!r}", code=ErrorCode.BACKEND_UNAVAILABLE
                    )
            except KafkaError as exc:
                error = FleetError(
                    f"Kafka did not create topics at {kafka.bootstrap}: {exc}", code=ErrorCode.BACKEND_UNAVAILABLE
                )
                unsure.update(dict.fromkeys(chunk, error))
            else:
                refused.update(_refused(response))
        if unsure:
            present = set(await admin.list_topics())
            refused.update({topic: error for topic, error in unsure.items() if topic not in present})
    except KafkaError as exc:
        raise FleetError(f"Kafka unavailable at {kafka.bootstrap}: {exc}", code=ErrorCode.BACKEND_UNAVAILABLE) from exc
    finally:
        await admin.close()
    return missing, refused


def _refused(response: Any) -> dict[str, FleetError]:
    """A FleetError for every topic the broker did not create (already existing is fine)."""
    refused: dict[str, FleetError] = {}
    for entry in getattr(response, "topic_errors", ()):
        topic, code = entry[0], entry[1]
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        error = for_code(code)
        reason = (entry[2] if len(entry) > 2 else None) or error.description
        if code == InvalidReplicationFactorError.errno:
            reason += " (FLEET_KAFKA_REPLICATION_FACTOR: 0 follows the cluster's broker count)"
        refused[topic] = FleetError(
            f"Kafka did not create topic {topic!r}: {error.__name__} (error {code}): {reason}",
            code=ErrorCode.BACKEND_UNAVAILABLE if error.retriable else ErrorCode.INTERNAL,
        )
    return refused


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What a Metadata answer says about the cluster: its live brokers and its id (None when not reported)."""

    brokers: int
    cluster_id: str | None


async def cluster_info(kafka: KafkaSettings) -> ClusterInfo:
    """The cluster's broker count and id (one metadata request for no topic; FleetError when unreachable)."""
    return (await _metadata(kafka, []))[1]


async def topic_partitions(kafka: KafkaSettings, topics: Sequence[str]) -> dict[str, int]:
    """Partition count of each of ``topics`` that exists (one metadata request; a missing topic is left out and
    never auto-created, which a consumer's or producer's metadata request would do on most brokers)."""
    return (await _metadata(kafka, topics))[0]


async def _metadata(kafka: KafkaSettings, topics: Sequence[str]) -> tuple[dict[str, int], ClusterInfo]:
    client = AIOKafkaClient(**kafka.client_kwargs())
    try:
        await client.bootstrap()
        request = MetadataRequest(list(topics), allow_auto_topic_creation=False)
        response = await client.send(client.get_random_node(), request)
    except KafkaError as exc:
        raise FleetError(f"Kafka unavailable at {kafka.bootstrap}: {exc}", code=ErrorCode.BACKEND_UNAVAILABLE) from exc
    finally:
        await client.close()
    counts: dict[str, int] = {}
    for entry in response.topics:
        error_code, topic = entry[0], entry[1]
        found = next((field for field in entry[2:] if isinstance(field, list)), [])
        if not error_code and found:
            counts[topic] = len(found)
    return counts, ClusterInfo(len(response.brokers), getattr(response, "cluster_id", None) or None)


async def replication_factor(kafka: KafkaSettings, info: ClusterInfo | None = None) -> int:
    """Replication factor of new topics: ``FLEET_KAFKA_REPLICATION_FACTOR``, or when it is 0 the cluster's
    (3 with 3 brokers or more, else the broker count; ``info`` when known, else one metadata request)."""
    if kafka.replication_factor > 0:
        return kafka.replication_factor
    if info is None:
        info = await cluster_info(kafka)
    return kafka.replication_for(info.brokers)


async def ensure_bulk_topic(
    kafka: KafkaSettings, names: Names, model: str, *, admin_client: Callable[..., Any] = AIOKafkaAdminClient
) -> bool:
    """Create ``model``'s bulk-lane topic unless it exists, with as many partitions as its request topic
    (``kafka.partitions`` when that is missing too); True when this call created it.

    Registration creates only the request topic: the bulk topic comes with the first bulk request (most
    models never get one). FleetError as ``ensure_model_topics`` when the broker refuses it or is unreachable.
    """
    bulk, request = names.bulk_topic(model), names.request_topic(model)
    counts, info = await _metadata(kafka, [bulk, request])
    if bulk in counts:
        return False
    count = counts.get(request, kafka.partitions)
    new = NewTopic(bulk, num_partitions=count, replication_factor=await replication_factor(kafka, info))
    admin = admin_client(**kafka.client_kwargs())
    try:
        await admin.start()
        response = await admin.create_topics([new])
    except TopicAlreadyExistsError:  # another process created it meanwhile
        return False
    except KafkaError as exc:
        raise FleetError(
            f"Kafka did not create topic {bulk!r} at {kafka.bootstrap}: {exc}", code=ErrorCode.BACKEND_UNAVAILABLE
        ) from exc
    finally:
        await admin.close()
    refused = _refused(response)
    if bulk in refused:
        raise refused[bulk]
    created = not any(entry[1] == TopicAlreadyExistsError.errno for entry in getattr(response, "topic_errors", ()))
    if created:
        log.info("created bulk topic %s (%d partitions) on first use", bulk, new.num_partitions)
    return created


class BulkTopics:
    """Publishers' view of the bulk-lane topics: ``ensure(topic)`` before the first send to a model's bulk topic
    creates it when it is missing (``ensure_bulk_topic``); afterwards the topic is known and costs nothing.

    Any other topic passes untouched. Concurrent first sends to one topic share one creation.
    """

    def __init__(
        self, kafka: KafkaSettings, names: Names, *, admin_client: Callable[..., Any] = AIOKafkaAdminClient
    ) -> None:
        self._kafka = kafka
        self._names = names
        self._admin_client = admin_client
        self._ready: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, topic: str) -> None:
        """Make sure ``topic`` exists when it is a bulk-lane topic (FleetError when it cannot be created)."""
        if topic in self._ready:
            return
        model = self._names.bulk_model(topic)
        if model is None:
            return
        async with self._locks.setdefault(topic, asyncio.Lock()):
            if topic not in self._ready:
                await ensure_bulk_topic(self._kafka, self._names, model, admin_client=self._admin_client)
                self._ready.add(topic)
