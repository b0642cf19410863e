"""The msgpack envelopes that travel between services: requests, responses and dead letters."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .codec import field as read
from .codec import pack, unpack_envelope
from .constants import ENVELOPE_VERSION
from .errors import ErrorCode, SchemaError
from .names import check_topic_name
from .pipeline_plan import PipelinePlan
from .tensors import Tensor

ParameterValue = str | int | float | bool
_PARAMETER_TYPES = (str, int, float, bool)


def now_ms() -> float:
    """Wall-clock time in epoch milliseconds (the unit of every timestamp in the envelopes)."""
    return time.time() * 1000.0


class ReplyKind(StrEnum):
    """Where a worker delivers a response."""

    STREAM = "stream"  # XADD to a Redis stream (a gateway's or a producer client's); target = stream key
    RESULT = "result"  # only store it under the request's result key (fetched later: async jobs, producers)
    TOPIC = "topic"  # also produce it to a Kafka topic; target = topic name (streaming pipelines)
    NONE = "none"  # fire and forget: nobody waits
    STEP = "step"  # a pipeline step: the outputs go on to the next steps (target = pipeline name, see ``route``)


@dataclass(frozen=True, slots=True)
class ReplyAddress:
    """Reply routing of a request: a kind, its target and how long a stored result must be kept.

    A worker stores a request's first result (``names.result_key``) only where someone reads it later: kind
    ``result`` (an async job, a producer's submit-now-fetch-later), kind ``topic`` (with a marker once it is
    produced, so a redelivery is produced once) and kind ``stream`` with ``ttl_s`` set (a producer client that
    may resume reads back what was answered). A gateway's sync reply (``stream``, ``ttl_s`` 0) is the stream
    entry only: the gateway drops a duplicate by its id. Kind ``none`` stores nothing. A stored result is kept
    ``max(RESULT_TTL_S, ttl_s)`` seconds (an async job asks for its TTL). On the wire: ``[kind, target]``, or
    ``[kind, target, ttl_s]`` when ``ttl_s`` is set; kind ``step`` adds its ``route``:
    ``[kind, target, ttl_s, route]``.
    """

    kind: ReplyKind = ReplyKind.NONE
    target: str = ""
    ttl_s: int = 0
    #: Kind ``step`` only: the pipeline the request is a step of, and where its answer goes in the end.
    route: PipelineRoute | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind is ReplyKind.TOPIC:
            check_topic_name(self.target)
        if isinstance(self.ttl_s, bool) or not isinstance(self.ttl_s, int) or self.ttl_s < 0:
            raise SchemaError(f"reply ttl_s must be a non-negative integer, got {self.ttl_s!r}")
        if (self.kind is ReplyKind.STEP) != (self.route is not None):
            raise SchemaError("a reply address has a pipeline route exactly when its kind is step")

    def to_wire(self) -> list[Any]:
        if self.route is not None:
            return [self.kind.value, self.target, self.ttl_s, self.route.to_wire()]
        if self.ttl_s:
            return [self.kind.value, self.target, self.ttl_s]
        return [self.kind.value, self.target]

    @classmethod
    def from_wire(cls, raw: Any) -> ReplyAddress:
        if not (
            isinstance(raw, list)
            and len(raw) in (2, 3, 4)
            and isinstance(raw[0], str)
            and isinstance(raw[1], str)
            and (len(raw) == 2 or (isinstance(raw[2], int) and not isinstance(raw[2], bool)))
        ):
            raise SchemaError("reply address must be [kind, target], [kind, target, ttl_s] or a step's route")
        try:
            kind = ReplyKind(raw[0])
        except ValueError:
            raise SchemaError(f"unknown reply kind {raw[0]!r}") from None
        route = PipelineRoute.from_wire(raw[3]) if len(raw) == 4 else None
        return cls(kind, raw[1], raw[2] if len(raw) >= 3 else 0, route)


@dataclass(frozen=True, slots=True)
class PipelineRoute:
    """What a pipeline step's request carries: the pipeline request it belongs to, the step it is, the plan
    (versions resolved), the tensors gathered so far that this step or a later one reads (named by their
    reference, ``inputs.x`` / ``step.y``), the caller's reply address and lane, and when it was sent.

    The caller's answer has the pipeline request's ``request_id`` and goes to ``caller`` (never a step).
    ``token`` tells this record from another one of the same step (a step passed on twice): the record that
    stored a step's first answer is the only one that passes it on (`workers.steps`). ``trace`` is the W3C
    traceparent of the request's trace ("" when not traced), put on every step's record.
    """

    request_id: str
    step: str
    plan: PipelinePlan
    gathered: tuple[Tensor, ...]
    caller: ReplyAddress
    lane: str = "interactive"
    sent_ms: float = field(default_factory=now_ms)
    deadline_ms: float | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    trace: str = ""

    def __post_init__(self) -> None:
        if self.caller.kind is ReplyKind.STEP:
            raise SchemaError("a pipeline's caller cannot be a step")

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.request_id,
            "step": self.step,
            "plan": self.plan.to_wire(),
            "gathered": [t.to_wire() for t in self.gathered],
            "caller": self.caller.to_wire(),
            "lane": self.lane,
            "sent_ms": self.sent_ms,
            "deadline_ms": self.deadline_ms,
            "token": self.token,
            "trace": self.trace,
        }

    @classmethod
    def from_wire(cls, raw: Any) -> PipelineRoute:
        if not isinstance(raw, dict):
            raise SchemaError("a pipeline route must be a map")
        return cls(
            request_id=read(raw, "id", str),
            step=read(raw, "step", str),
            plan=PipelinePlan.from_wire(raw.get("plan")),
            gathered=_tensors(raw.get("gathered"), "gathered"),
            caller=ReplyAddress.from_wire(raw.get("caller")),
            lane=read(raw, "lane", str),
            sent_ms=read(raw, "sent_ms", float),
            deadline_ms=read(raw, "deadline_ms", float, optional=True),
            token=read(raw, "token", str, optional=True) or "",
            trace=read(raw, "trace", str, optional=True) or "",
        )


def _tensors(raw: Any, key: str) -> tuple[Tensor, ...]:
    if not isinstance(raw, list):
        raise SchemaError(f"field {key!r} must be a list of tensors")
    return tuple(Tensor.from_wire(t) for t in raw)


def _parameters(raw: Any) -> dict[str, ParameterValue]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, _PARAMETER_TYPES) for k, v in raw.items()
    ):
        raise SchemaError("parameters must map strings to str/int/float/bool")
    return dict(raw)


def _attempt(raw: Any) -> int:
    if raw is None:
        return 1
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise SchemaError("field 'attempt' must be an integer >= 1")
    return raw


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One inference request on a model's request topic."""

    id: str
    model: str
    version: str
    inputs: tuple[Tensor, ...]
    reply: ReplyAddress = ReplyAddress()
    outputs: tuple[str, ...] = ()  # requested outputs; empty means all
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    deadline_ms: float | None = None  # absolute epoch ms after which the work is pointless
    created_ms: float = field(default_factory=now_ms)
    # Optional fields added without a version bump: old readers ignore them, old writers omit them.
    attempt: int = 1  # 1 for the first try; a retry carries the number of the try it is
    not_before_ms: float | None = None  # a retry waits on its retry topic until this epoch ms
    v: int = ENVELOPE_VERSION

    def expired(self, at_ms: float | None = None) -> bool:
        """True when the deadline has passed."""
        return self.deadline_ms is not None and (now_ms() if at_ms is None else at_ms) >= self.deadline_ms

    def due(self, at_ms: float | None = None) -> bool:
        """True unless the request is a retry whose ``not_before_ms`` is still in the future."""
        return self.not_before_ms is None or (now_ms() if at_ms is None else at_ms) >= self.not_before_ms

    def to_bytes(self) -> bytes:
        return pack(
            {
                "v": self.v,
                "id": self.id,
                "model": self.model,
                "version": self.version,
                "inputs": [t.to_wire() for t in self.inputs],
                "outputs": list(self.outputs),
                "parameters": self.parameters,
                "reply": self.reply.to_wire(),
                "deadline_ms": self.deadline_ms,
                "created_ms": self.created_ms,
                **({} if self.attempt == 1 else {"attempt": self.attempt}),
                **({} if self.not_before_ms is None else {"not_before_ms": self.not_before_ms}),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> InferenceRequest:
        """Decode a request; raises SchemaError (or UnsupportedEnvelopeError) on any fault."""
        obj = unpack_envelope(data, "request")
        outputs = obj.get("outputs") or []
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise SchemaError("field 'outputs' must be a list of strings")
        return cls(
            id=read(obj, "id", str),
            model=read(obj, "model", str),
            version=read(obj, "version", str),
            inputs=_tensors(obj.get("inputs"), "inputs"),
            reply=ReplyAddress.from_wire(obj.get("reply", ["none", ""])),
            outputs=tuple(outputs),
            parameters=_parameters(obj.get("parameters")),
            deadline_ms=read(obj, "deadline_ms", float, optional=True),
            created_ms=read(obj, "created_ms", float),
            attempt=_attempt(obj.get("attempt")),
            not_before_ms=read(obj, "not_before_ms", float, optional=True),
            v=obj["v"],
        )


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a request failed: a stable code and a human message."""

    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class InferenceResponse:
    """The answer to one request: outputs, or an error. Timings let clients see queue vs compute."""

    id: str
    model: str
    version: str
    outputs: tuple[Tensor, ...] = ()
    error: ErrorInfo | None = None
    worker: str = ""
    batch_size: int = 0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    v: int = ENVELOPE_VERSION

    @classmethod
    def failure(cls, request: InferenceRequest, code: ErrorCode, message: str, worker: str = "") -> InferenceResponse:
        """Error response to ``request``."""
        return cls(request.id, request.model, request.version, error=ErrorInfo(code, message), worker=worker)

    def to_bytes(self) -> bytes:
        return pack(
            {
                "v": self.v,
                "id": self.id,
                "model": self.model,
                "version": self.version,
                "outputs": [t.to_wire() for t in self.outputs],
                "error": None if self.error is None else [self.error.code.value, self.error.message],
                "worker": self.worker,
                "batch_size": self.batch_size,
                "queue_ms": self.queue_ms,
                "compute_ms": self.compute_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> InferenceResponse:
        obj = unpack_envelope(data, "response")
        raw_error = obj.get("error")
        error: ErrorInfo | None = None
        if raw_error is not None:
            if not (isinstance(raw_error, list) and len(raw_error) == 2 and all(isinstance(x, str) for x in raw_error)):
                raise SchemaError("field 'error' must be [code, message]")
            try:
                code = ErrorCode(raw_error[0])
            except ValueError:
                code = ErrorCode.INTERNAL
            error = ErrorInfo(code, raw_error[1])
        return cls(
            id=read(obj, "id", str),
            model=read(obj, "model", str),
            version=read(obj, "version", str),
            outputs=_tensors(obj.get("outputs", []), "outputs"),
            error=error,
            worker=read(obj, "worker", str, optional=True) or "",
            batch_size=read(obj, "batch_size", int, optional=True) or 0,
            queue_ms=read(obj, "queue_ms", float, optional=True) or 0.0,
            compute_ms=read(obj, "compute_ms", float, optional=True) or 0.0,
            v=obj["v"],
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record a worker could not process, with the reason, kept on the model's dead-letter topic."""

    code: ErrorCode
    reason: str
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    worker: str = ""
    at_ms: float = field(default_factory=now_ms)
    v: int = ENVELOPE_VERSION

    def to_bytes(self) -> bytes:
        return pack(
            {
                "v": self.v,
                "code": self.code.value,
                "reason": self.reason,
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "value": self.value,
                "key": self.key,
                "headers": [[k, v] for k, v in self.headers],
                "worker": self.worker,
                "at_ms": self.at_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DeadLetter:
        obj = unpack_envelope(data, "dead letter")
        headers = obj.get("headers") or []
        if not isinstance(headers, list) or not all(
            isinstance(h, list) and len(h) == 2 and isinstance(h[0], str) and isinstance(h[1], bytes) for h in headers
        ):
            raise SchemaError("field 'headers' must be a list of [str, bytes]")
        try:
            code = ErrorCode(read(obj, "code", str))
        except ValueError:
            code = ErrorCode.INTERNAL
        return cls(
            code=code,
            reason=read(obj, "reason", str),
            topic=read(obj, "topic", str),
            partition=read(obj, "partition", int),
            offset=read(obj, "offset", int),
            value=read(obj, "value", bytes),
            key=read(obj, "key", bytes, optional=True),
            headers=tuple((h[0], h[1]) for h in headers),
            worker=read(obj, "worker", str, optional=True) or "",
            at_ms=read(obj, "at_ms", float),
            v=obj["v"],
        )
