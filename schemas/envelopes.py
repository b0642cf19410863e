"""The msgpack envelopes that travel between services: requests, responses and dead letters."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
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

    ``lists``: the reader of a ``stream`` target also reads reply lists (one entry, field ``rb``, carrying
    several responses: `pack_responses`). It travels as the envelope's ``rl`` field, not in the address's wire
    form, so readers that predate it ignore it; only a gateway that reads lists sets it.
    """

    kind: ReplyKind = ReplyKind.NONE
    target: str = ""
    ttl_s: int = 0
    #: Kind ``step`` only: the pipeline the request is a step of, and where its answer goes in the end.
    route: PipelineRoute | None = field(default=None, compare=False)
    lists: bool = field(default=False, compare=False)

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
    return tuple([_tensor(t) for t in raw])


def _tensor(raw: Any) -> Tensor:
    """`Tensor.from_wire` with its type checks inlined for the common case (every decoded request and response
    holds some: the per-request decode cost); anything unusual goes through ``from_wire`` for its error. The
    tensor's own checks (datatype, shape, data size) still run in its constructor."""
    if type(raw) is list and len(raw) == 4:
        name, datatype, shape, data = raw
        if type(name) is str and type(datatype) is str and type(shape) is list and type(data) is bytes:
            return Tensor(name, datatype, tuple(shape), data)
    return Tensor.from_wire(raw)


# Typed reads of the fields every envelope has, fast where the value has the expected type (a plain ``type(x) is``
# test, no call); otherwise ``codec.field`` decides, with its error.
def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if type(value) is str else read(obj, key, str)


def _float(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    return value if type(value) is float else read(obj, key, float)


def _optional_float(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None or type(value) is float:
        return value
    return read(obj, key, float, optional=True)


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

    def to_bytes(self, *, reply_lists: bool = False) -> bytes:
        """The single-request envelope; ``reply_lists`` (or ``reply.lists``) marks the reply address as one
        that reads reply lists (field ``rl``)."""
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
                **({"rl": True} if reply_lists or self.reply.lists else {}),
            }
        )

    def member_wire(self) -> dict[str, Any]:
        """This request as a member of an `InferenceRequestBatch` (what is not the batch's own)."""
        wire: dict[str, Any] = {
            "id": self.id,
            "inputs": [t.to_wire() for t in self.inputs],
            "deadline_ms": self.deadline_ms,
            "created_ms": self.created_ms,
        }
        if self.outputs:
            wire["outputs"] = list(self.outputs)
        if self.parameters:
            wire["parameters"] = self.parameters
        if self.attempt != 1:
            wire["attempt"] = self.attempt
        if self.not_before_ms is not None:
            wire["not_before_ms"] = self.not_before_ms
        return wire

    @classmethod
    def from_bytes(cls, data: bytes) -> InferenceRequest:
        """Decode a request; raises SchemaError (or UnsupportedEnvelopeError) on any fault."""
        obj = unpack_envelope(data, "request")
        if obj.get("kind") == BATCH_KIND:
            raise SchemaError("request: a batch envelope (InferenceRequestBatch) where one request was expected")
        read(obj, "id", str)  # the first field checked, as before the batch envelope
        model, version = read(obj, "model", str), read(obj, "version", str)
        reply = ReplyAddress.from_wire(obj.get("reply", ["none", ""]))
        if obj.get("rl") is True and reply.kind is ReplyKind.STREAM:
            reply = ReplyAddress(reply.kind, reply.target, reply.ttl_s, lists=True)
        return cls._member(obj, model, version, reply, obj["v"])

    @classmethod
    def _member(cls, obj: dict[str, Any], model: str, version: str, reply: ReplyAddress, v: int) -> InferenceRequest:
        """The request in ``obj`` (a single envelope, or a batch member with the batch's model, version, reply)."""
        outputs = obj.get("outputs") or []
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise SchemaError("field 'outputs' must be a list of strings")
        return cls(
            _str(obj, "id"),
            model,
            version,
            _tensors(obj.get("inputs"), "inputs"),
            reply,
            tuple(outputs),
            _parameters(obj.get("parameters")),
            _optional_float(obj, "deadline_ms"),
            _float(obj, "created_ms"),
            _attempt(obj.get("attempt")),
            _optional_float(obj, "not_before_ms"),
            v,
        )


#: ``kind`` of a batch envelope (a single request's envelope has no ``kind``).
BATCH_KIND = "batch"


@dataclass(frozen=True, slots=True)
class BadMember:
    """A member of a batch record that does not decode: why, the member as it came (re-packed as a single
    envelope, for its dead letter), and when its id is readable a request without inputs that carries its id
    and the batch's model, version and reply address (so its error can be answered)."""

    error: SchemaError
    value: bytes
    stub: InferenceRequest | None = None


@dataclass(frozen=True, slots=True)
class InferenceRequestBatch:
    """Several requests for one model version with one reply address, as one Kafka record (``fleet-batch``
    header: the member count). Each member keeps its own id, inputs, outputs, parameters, deadline and
    created time. On the wire: ``{v, kind: "batch", model, version, reply, rl, requests: [member, ...]}``
    (a member: `InferenceRequest.member_wire`). Only workers that advertise reading it get one (a gateway
    sends today's single envelope otherwise), so an older worker never sees it.
    """

    model: str
    version: str
    reply: ReplyAddress
    requests: tuple[InferenceRequest, ...]
    v: int = ENVELOPE_VERSION

    def __post_init__(self) -> None:
        if not self.requests:
            raise SchemaError("a request batch needs at least one request")
        for request in self.requests:
            if (request.model, request.version, request.reply) != (self.model, self.version, self.reply):
                raise SchemaError(f"request {request.id} of a batch names another model, version or reply address")

    def to_bytes(self, *, reply_lists: bool = False) -> bytes:
        return pack(
            {
                "v": self.v,
                "kind": BATCH_KIND,
                "model": self.model,
                "version": self.version,
                "reply": self.reply.to_wire(),
                "rl": reply_lists or self.reply.lists,
                "requests": [request.member_wire() for request in self.requests],
            }
        )

    @staticmethod
    def members_from_bytes(data: bytes) -> list[InferenceRequest | BadMember]:
        """The members of a batch envelope, each decoded on its own (a bad one is a `BadMember`); raises
        SchemaError (or UnsupportedEnvelopeError) when the batch itself does not decode."""
        obj = unpack_envelope(data, "request batch")
        if obj.get("kind") != BATCH_KIND:
            raise SchemaError("request batch: field 'kind' must be 'batch'")
        model, version = read(obj, "model", str), read(obj, "version", str)
        reply = ReplyAddress.from_wire(obj.get("reply", ["none", ""]))
        if obj.get("rl") is True and reply.kind is ReplyKind.STREAM:
            reply = ReplyAddress(reply.kind, reply.target, reply.ttl_s, lists=True)
        raw_members = obj.get("requests")
        if not isinstance(raw_members, list) or not raw_members:
            raise SchemaError("request batch: field 'requests' must be a non-empty list")
        members: list[InferenceRequest | BadMember] = []
        for raw in raw_members:
            try:
                if not isinstance(raw, dict):
                    raise SchemaError("a batch member must be a map")
                members.append(InferenceRequest._member(raw, model, version, reply, obj["v"]))
            except SchemaError as exc:
                if not isinstance(raw, dict):
                    members.append(BadMember(exc, pack(raw)))
                    continue
                single = {**raw, "v": obj["v"], "model": model, "version": version, "reply": reply.to_wire()}
                request_id = raw.get("id")
                stub = None
                if isinstance(request_id, str):
                    stub = InferenceRequest(request_id, model, version, (), reply, created_ms=now_ms())
                members.append(BadMember(exc, pack(single), stub))
        return members


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
        return pack(self.to_wire())

    def to_wire(self) -> dict[str, Any]:
        """The response's envelope map (``to_bytes`` packs it; a reply list packs several)."""
        return {
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

    @classmethod
    def from_bytes(cls, data: bytes) -> InferenceResponse:
        return cls.from_wire(unpack_envelope(data, "response"))

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> InferenceResponse:
        """Inverse of `to_wire` (the version already checked); raises SchemaError on anything malformed."""
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
        worker = obj.get("worker")
        batch_size = obj.get("batch_size")
        return cls(
            _str(obj, "id"),
            _str(obj, "model"),
            _str(obj, "version"),
            _tensors(obj.get("outputs", []), "outputs"),
            error,
            worker if type(worker) is str else read(obj, "worker", str, optional=True) or "",
            batch_size if type(batch_size) is int else read(obj, "batch_size", int, optional=True) or 0,
            _optional_float(obj, "queue_ms") or 0.0,
            _optional_float(obj, "compute_ms") or 0.0,
            obj["v"],
        )


def pack_responses(responses: Sequence[InferenceResponse]) -> bytes:
    """A reply list: several responses in one reply stream entry (field ``rb``), ``{v, responses: [...]}``."""
    return pack({"v": ENVELOPE_VERSION, "responses": [r.to_wire() for r in responses]})


def unpack_responses(data: bytes) -> tuple[list[InferenceResponse], list[SchemaError]]:
    """The responses of a reply list, and why those that do not decode did not; raises SchemaError when the
    list itself does not decode."""
    obj = unpack_envelope(data, "reply list")
    raw = obj.get("responses")
    if not isinstance(raw, list):
        raise SchemaError("reply list: field 'responses' must be a list")
    responses: list[InferenceResponse] = []
    errors: list[SchemaError] = []
    for item in raw:
        try:
            if not isinstance(item, dict) or not isinstance(item.get("v"), int) or item["v"] > ENVELOPE_VERSION:
                raise SchemaError("reply list: a response must be a map of a known envelope version")
            responses.append(InferenceResponse.from_wire(item))
        except SchemaError as exc:
            errors.append(exc)
    return responses, errors


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
