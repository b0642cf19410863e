"""Dead letters: records a worker cannot answer, kept with the reason on the model's DLQ topic.

A record lands here when it does not decode (``UNDECODABLE`` / ``UNSUPPORTED_ENVELOPE``), or when it
decodes but cannot be answered and nobody waits for an answer (no reply address).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaError

from schemas import DeadLetter, ErrorCode, Names
from schemas.constants import CONTENT_TYPE_MSGPACK, HEADER_CONTENT_TYPE

from .errors import BackendDownError

log = logging.getLogger("fleet.workers")


def dead_letter(record: Any, code: ErrorCode, reason: str, worker: str) -> DeadLetter:
    """A DeadLetter that keeps an aiokafka ``ConsumerRecord`` (value, key, headers, position) and why."""
    headers = tuple((str(k), bytes(v or b"")) for k, v in (record.headers or ()))
    return DeadLetter(
        code=code,
        reason=reason,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        value=bytes(record.value or b""),
        key=None if record.key is None else bytes(record.key),
        headers=headers,
        worker=worker,
    )


class DeadLetterWriter:
    """Produces dead letters to ``names.dlq_topic(model)`` and waits until the broker has them."""

    def __init__(self, producer: Any, names: Names) -> None:
        self._producer = producer
        self._names = names

    async def send(self, model: str, letters: Sequence[DeadLetter]) -> None:
        """Produce ``letters``; raises BackendDownError when Kafka does not take them (do not commit then)."""
        if not letters:
            return
        topic = self._names.dlq_topic(model)
        headers = [(HEADER_CONTENT_TYPE, CONTENT_TYPE_MSGPACK.encode())]
        try:
            sent = [
                await self._producer.send(topic, letter.to_bytes(), key=letter.key, headers=headers)
                for letter in letters
            ]
            await asyncio.gather(*sent)
        except KafkaError as exc:
            raise BackendDownError(f"Kafka unavailable, dead letters not stored: {exc}") from exc
        for letter in letters:
            log.warning(
                "dead letter %s:%d@%d -> %s: %s %s",
                letter.topic,
                letter.partition,
                letter.offset,
                topic,
                letter.code.value,
                letter.reason,
            )
