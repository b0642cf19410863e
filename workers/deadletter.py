"""Dead letters: records a worker cannot answer, kept with the reason on the namespace's dead-letter topic.

The topic is shared by every model (``Names.dlq_topic``); each record's headers name the model
(``fleet-model``) and, when the request decodes, its version (``fleet-version``), so ``fleet dlq`` shows
one model's dead letters without decoding the others.

A record lands here when it does not decode (``UNDECODABLE`` / ``UNSUPPORTED_ENVELOPE``), or when it
decodes but cannot be answered and nobody waits for an answer (no reply address). ``send_some`` returns
the letters Kafka did not take, so a retried delivery produces only those (each letter once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaError

from schemas import DeadLetter, ErrorCode, InferenceRequest, Names, SchemaError
from schemas.constants import CONTENT_TYPE_MSGPACK, HEADER_CONTENT_TYPE, HEADER_MODEL, HEADER_VERSION

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
    """Produces dead letters to ``names.dlq_topic`` (headers: the model, the version) and waits for the broker."""

    def __init__(self, producer: Any, names: Names) -> None:
        self._producer = producer
        self._names = names

    async def send(self, model: str, letters: Sequence[DeadLetter]) -> None:
        """Produce ``letters``; raises BackendDownError when Kafka does not take them (do not commit then)."""
        pending = await self.send_some(model, letters)
        if pending:
            raise BackendDownError(f"Kafka unavailable, {len(pending)} dead letter(s) not stored")

    async def send_some(self, model: str, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Produce ``letters`` and wait for the acks; returns those Kafka did not take (send them again)."""
        if not letters:
            return []
        topic = self._names.dlq_topic
        base = [(HEADER_CONTENT_TYPE, CONTENT_TYPE_MSGPACK.encode()), (HEADER_MODEL, model.encode())]
        # Off the event loop: a dead-lettered request may be large, and only decoding it tells its version.
        versions = await asyncio.to_thread(lambda: [request_version(letter.value) for letter in letters])
        sent: list[tuple[DeadLetter, Any]] = []
        pending: list[DeadLetter] = []
        for letter, version in zip(letters, versions, strict=True):
            headers = [*base, (HEADER_VERSION, version.encode())] if version else base
            try:
                future = await self._producer.send(topic, letter.to_bytes(), key=letter.key, headers=headers)
            except KafkaError as exc:
                _log_pending(letter, exc)
                pending.append(letter)
            else:
                sent.append((letter, future))
        outcomes = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        for (letter, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, KafkaError):
                    raise outcome
                _log_pending(letter, outcome)
                pending.append(letter)
                continue
            log.warning(
                "dead letter %s:%d@%d -> %s: %s %s",
                letter.topic,
                letter.partition,
                letter.offset,
                topic,
                letter.code.value,
                letter.reason,
            )
        return pending


def request_version(value: bytes) -> str:
    """The version of the request envelope ``value`` ("" when it does not decode)."""
    try:
        return InferenceRequest.from_bytes(value).version
    except SchemaError:
        return ""


def _log_pending(letter: DeadLetter, exc: BaseException) -> None:
    log.warning("dead letter %s:%d@%d not stored yet: %s", letter.topic, letter.partition, letter.offset, exc)
