"""Creating a model's topics with their intended partition count (never rely on auto-creation)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from .errors import ErrorCode, FleetError
from .names import Names
from .settings import KafkaSettings

log = logging.getLogger("fleet.schemas")


async def ensure_model_topics(
    kafka: KafkaSettings,
    names: Names,
    model: str,
    partitions: int | None = None,
    *,
    admin_client: Callable[..., Any] = AIOKafkaAdminClient,
) -> None:
    """Create the topics of ``model`` (both lanes, their retry topics, dead letters) if they do not exist yet.

    Producing to a missing topic would auto-create it with the broker's default partition count,
    which silently caps the model's useful workers; so registration creates them explicitly. A topic the
    broker refuses to create (other than "already exists": another process won the race) raises a
    FleetError that names the topic and the broker's reason (BACKEND_UNAVAILABLE when the error is
    retriable, INTERNAL otherwise). ``admin_client`` builds the admin client (a seam for tests).
    """
    count = partitions or kafka.partitions
    wanted = [*names.model_topics(model)]
    admin = admin_client(**kafka.client_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                response = await admin.create_topics(
                    [NewTopic(t, num_partitions=count, replication_factor=kafka.replication_factor) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another process won the race
            else:
                _check_created(response)
                log.info("created topics %s with %d partitions", missing, count)
    except KafkaError as exc:
        raise FleetError(f"Kafka unavailable at {kafka.bootstrap}: {exc}", code=ErrorCode.BACKEND_UNAVAILABLE) from exc
    finally:
        await admin.close()


def _check_created(response: Any) -> None:
    """Raise a FleetError for the first topic the broker did not create (already existing is fine)."""
    for entry in getattr(response, "topic_errors", ()):
        topic, code = entry[0], entry[1]
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        error = for_code(code)
        reason = (entry[2] if len(entry) > 2 else None) or error.description
        raise FleetError(
            f"Kafka did not create topic {topic!r}: {error.__name__} (error {code}): {reason}",
            code=ErrorCode.BACKEND_UNAVAILABLE if error.retriable else ErrorCode.INTERNAL,
        )
