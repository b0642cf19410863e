"""Generation on the queue: what a text-generation request asks for, the stream chunks a worker emits, cancels.

A generation request is an ordinary ``InferenceRequest`` to a ``text-generation`` model: input ``text`` (BYTES,
one prompt) and the sampling parameters in ``parameters`` (``max_tokens``, ``temperature``, ``top_p``, ``seed``,
``stop`` as a JSON list of strings, ``stream``). Its final answer is an ``InferenceResponse`` with the outputs of
:data:`GENERATION_OUTPUTS`. When ``stream`` is true and the reply goes to a reply stream, the worker also
``XADD``s a :class:`StreamChunk` (field ``c``) to that stream for each piece of text as it is decoded, before the
final response (field ``r``). Chunks carry a sequence number from 1: a request redelivered to another worker
(its first worker died) streams again from 1, and the reader drops what it has seen.

A caller that goes away sets the request's cancel marker (:func:`cancel_key`); the worker checks the markers of
its running sequences between decode steps and ends a cancelled one with ``CANCELLED``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .codec import field as read
from .codec import pack, unpack_envelope
from .constants import ENVELOPE_VERSION
from .envelopes import ParameterValue
from .errors import ErrorCode, SchemaError
from .names import Names

TEXT_GENERATION = "text-generation"
#: The field of a reply-stream entry that holds a chunk (a response is field ``r``).
CHUNK_FIELD = b"c"
#: Outputs of a generation response, one element each: the text, token counts, why it stopped.
OUTPUT_TEXT = "text_output"
OUTPUT_PROMPT_TOKENS = "prompt_tokens"
OUTPUT_COMPLETION_TOKENS = "completion_tokens"
OUTPUT_FINISH_REASON = "finish_reason"
GENERATION_OUTPUTS = (OUTPUT_TEXT, OUTPUT_PROMPT_TOKENS, OUTPUT_COMPLETION_TOKENS, OUTPUT_FINISH_REASON)
#: Why a sequence ended: its end-of-sequence token or a stop string, or ``max_tokens``.
FINISH_STOP = "stop"
FINISH_LENGTH = "length"
#: How long a cancel marker lives (a request is never older than the gateway's longest timeout).
CANCEL_TTL_S = 3600
DEFAULT_MAX_TOKENS = 16
MAX_STOP_STRINGS = 4


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The fallback chat template (a tokenizer without one): each message as ``role: content`` on its own line,
    then ``assistant:`` for the answer to follow."""
    lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def cancel_key(names: Names, request_id: str) -> str:
    """The marker a gateway sets when the caller of ``request_id`` went away (a worker stops generating)."""
    return f"{names.tag('gen')}:cancel:{request_id}"


def _invalid(message: str) -> SchemaError:
    return SchemaError(message, code=ErrorCode.INVALID_REQUEST)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to generate: at most ``max_tokens`` new tokens, greedy when ``temperature`` is 0."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    #: The prompt is a JSON list of chat messages ({"role", "content"}), put in the model's chat template.
    chat: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise _invalid(f"max_tokens must be a whole number >= 1, got {self.max_tokens!r}")
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)):
            raise _invalid(f"temperature must be a number, got {self.temperature!r}")
        if not 0.0 <= self.temperature <= 2.0:
            raise _invalid(f"temperature must be between 0 and 2, got {self.temperature!r}")
        if not (isinstance(self.top_p, int | float) and 0.0 < self.top_p <= 1.0):
            raise _invalid(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise _invalid(f"seed must be an integer, got {self.seed!r}")
        if len(self.stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in self.stop):
            raise _invalid(f"stop must be at most {MAX_STOP_STRINGS} non-empty strings")

    def to_parameters(self) -> dict[str, ParameterValue]:
        """The request parameters that carry these settings."""
        out: dict[str, ParameterValue] = {
            "max_tokens": self.max_tokens,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "stream": self.stream,
        }
        if self.chat:
            out["chat"] = True
        if self.seed is not None:
            out["seed"] = self.seed
        if self.stop:
            out["stop"] = json.dumps(list(self.stop))
        return out

    @classmethod
    def from_parameters(cls, parameters: dict[str, Any]) -> SamplingParams:
        """Read them back from a request's parameters; SchemaError(INVALID_REQUEST) naming the bad one."""
        stop_raw = parameters.get("stop")
        stop: tuple[str, ...] = ()
        if isinstance(stop_raw, str) and stop_raw:
            try:
                decoded = json.loads(stop_raw)
            except ValueError:
                decoded = stop_raw
            stop = (decoded,) if isinstance(decoded, str) else tuple(decoded) if isinstance(decoded, list) else ()
        elif stop_raw is not None and stop_raw != "":
            raise _invalid("stop must be a string or a JSON list of strings")
        seed = parameters.get("seed")
        return cls(
            max_tokens=parameters.get("max_tokens", DEFAULT_MAX_TOKENS),
            temperature=parameters.get("temperature", 0.0),
            top_p=parameters.get("top_p", 1.0),
            seed=seed,
            stop=stop,
            stream=bool(parameters.get("stream", False)),
            chat=bool(parameters.get("chat", False)),
        )


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """A piece of a request's generated text (``seq`` from 1, in order), as a worker decoded it."""

    id: str
    seq: int
    text: str
    tokens: int = 1  # tokens this piece covers
    worker: str = ""
    v: int = ENVELOPE_VERSION

    def to_bytes(self) -> bytes:
        return pack(
            {
                "v": self.v,
                "id": self.id,
                "seq": self.seq,
                "text": self.text,
                "tokens": self.tokens,
                "worker": self.worker,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamChunk:
        """Decode a chunk; SchemaError on any fault."""
        obj = unpack_envelope(data, "chunk")
        return cls(
            id=read(obj, "id", str),
            seq=read(obj, "seq", int),
            text=read(obj, "text", str),
            tokens=read(obj, "tokens", int, optional=True) or 0,
            worker=read(obj, "worker", str, optional=True) or "",
            v=obj["v"],
        )
