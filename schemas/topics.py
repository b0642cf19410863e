"""Creating a model's topics with their intended partition count (never rely on auto-creation)."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from .errors import ErrorCode, FleetError
from .names import Names
from .settings import KafkaSettings

log = logging.getLogger("fleet.schemas")


async def ensure_model_topics(kafka: KafkaSettings, names: Names, model: str, partitions: int | None = None) -> None:
    """Create the topics of ``model`` (both lanes, their retry topics, dead letters) if they do not exist yet.

    Producing to a missing topic would auto-create it with the broker's default partition count,
    which silently caps the model's useful workers; so registration creates them explicitly.
    """
    count = partitions or kafka.partitions
    wanted = [*names.model_topics(model)]
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, num_partitions=count, replication_factor=kafka.replication_factor) for t in missing]
                )
                log.info("created topics %s with %d partitions", missing, count)
            except TopicAlreadyExistsError:
                pass  # another process won the race
    except KafkaError as exc:
        raise FleetError(f"Kafka unavailable at {kafka.bootstrap}: {exc}", code=ErrorCode.BACKEND_UNAVAILABLE) from exc
    finally:
        await admin.close()
