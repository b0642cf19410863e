"""Generation requests through the queue: publish a prompt, relay the worker's text as it comes, end it cleanly.

``GenerationPath.generate`` publishes one ``InferenceRequest`` to a ``text-generation`` model (input ``text``,
sampling settings in its parameters, ``schemas.generation``) and yields the :class:`~schemas.generation.StreamChunk`
pieces its worker streams, then the final ``InferenceResponse``. Chunks of a redelivered request (its first
worker died) start again at 1: those seen already are dropped. The stream ends with an error, never silently:
``DeadlineExceededError`` at the request's deadline, ``BackendDownError`` when no chunk nor answer came for
``FLEET_GATEWAY_STREAM_IDLE_TIMEOUT_S`` (the worker died and nothing took the request over), the worker's error
as ``WorkerReplyError``. When the caller goes away (the generator is closed before the answer) the request's
cancel marker is set, and its worker stops generating at its next step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from schemas import (
    ErrorCode,
    FleetError,
    InferenceRequest,
    InferenceResponse,
    Lane,
    ModelRecord,
    ReplyAddress,
    ReplyKind,
    Tensor,
    now_ms,
)
from schemas.generation import (
    CANCEL_TTL_S,
    OUTPUT_COMPLETION_TOKENS,
    OUTPUT_FINISH_REASON,
    OUTPUT_PROMPT_TOKENS,
    OUTPUT_TEXT,
    SamplingParams,
    StreamChunk,
    cancel_key,
)
from schemas.text_models import TEXT_GENERATION

from .backends import Backends
from .errors import (
    BackendDownError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    WorkerReplyError,
)
from .routes import Routes


@dataclass(frozen=True)
class Generated:
    """A finished generation: the text, the token counts and why it stopped."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def generated(response: InferenceResponse) -> Generated:
    """Read a generation response's outputs."""
    outputs = {t.name: t.to_numpy() for t in response.outputs}

    def first(name: str) -> object:
        array = outputs.get(name)
        return None if array is None or array.size == 0 else array.reshape(-1)[0]

    def text(name: str) -> str:
        value = first(name)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")

    return Generated(
        text(OUTPUT_TEXT),
        int(first(OUTPUT_PROMPT_TOKENS) or 0),  # type: ignore[call-overload]
        int(first(OUTPUT_COMPLETION_TOKENS) or 0),  # type: ignore[call-overload]
        text(OUTPUT_FINISH_REASON) or "stop",
    )


class GenerationPath:
    """One gateway's generation requests (the generate and OpenAI routes use it)."""

    def __init__(self, backends: Backends, routes: Routes, wire_ids: Callable[[], str]) -> None:
        self._b = backends
        self._routes = routes
        self._wire_ids = wire_ids

    async def record(self, model: str, *, task: str = TEXT_GENERATION) -> ModelRecord:
        """The model's default record; 404 when it is unknown, 400 when it does not serve ``task``."""
        record = await self._b.cache.get(model, None)
        if record.task != task:
            what = record.task or record.framework.value
            raise InvalidRequestError(f"model {model!r} is a {what} model, not a {task} model")
        return record

    async def models(self) -> list[ModelRecord]:
        """The default record of every registered model (unreadable ones are left out)."""
        registry = self._b.cache.registry
        try:
            names = await registry.models()
        except FleetError as exc:
            raise BackendDownError("redis", exc.message) from None
        found = []
        for name in sorted(names):
            try:
                found.append(await self._b.cache.get(name, None))
            except (FleetError, ModelNotFoundError):
                continue
        return found

    def timeout_ms(self, requested_ms: float | None) -> float:
        """The request's timeout: ``requested_ms`` capped at the gateway's maximum, else the default."""
        settings = self._b.settings
        if requested_ms is None:
            return settings.default_timeout_s * 1000.0
        return min(requested_ms, settings.max_timeout_s * 1000.0)

    async def generate(
        self,
        record: ModelRecord,
        prompt: str,
        params: SamplingParams,
        *,
        timeout_ms: float,
        lane: Lane = Lane.INTERACTIVE,
    ) -> AsyncIterator[StreamChunk | InferenceResponse]:
        """Publish the request and yield its chunks (``params.stream``), then its successful final response."""
        b, listener = self._b, self._b.listener
        if self._routes.draining:
            raise BackendDownError("gateway", "the gateway is stopping")
        if not listener.healthy:
            raise BackendDownError("redis", listener.last_error)
        await self._routes.serviceability.check(record)
        started = now_ms()
        wire_id = self._wire_ids()
        text = np.empty(1, dtype=object)
        text[0] = prompt.encode()
        message = InferenceRequest(
            id=wire_id,
            model=record.name,
            version=record.version,
            inputs=(Tensor.from_numpy("text", text),),
            reply=ReplyAddress(ReplyKind.STREAM, listener.stream),
            parameters=params.to_parameters(),
            deadline_ms=started + timeout_ms,
            created_ms=started,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000.0
        idle_s = b.settings.stream_idle_timeout_s
        future = listener.expect(wire_id)
        chunks = listener.expect_chunks(wire_id)
        answered = False
        seen = 0
        try:
            async with asyncio.timeout_at(deadline):
                await b.publisher.publish(b.names.request_topic(record.name, lane), message)
            while True:
                while not chunks.empty():
                    chunk = chunks.get_nowait()
                    if chunk.seq > seen:
                        seen = chunk.seq
                        yield chunk
                if future.done():
                    break
                left = deadline - loop.time()
                if left <= 0:
                    raise DeadlineExceededError(record.name, timeout_ms)
                getter: asyncio.Future[Any] = asyncio.ensure_future(chunks.get())
                try:
                    done, _ = await asyncio.wait(
                        {getter, cast("asyncio.Future[Any]", future)},
                        timeout=min(left, idle_s),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    getter.cancel()
                if getter in done and not getter.cancelled():
                    chunk = getter.result()
                    if chunk.seq > seen:
                        seen = chunk.seq
                        yield chunk
                elif not done:
                    if loop.time() >= deadline:
                        raise DeadlineExceededError(record.name, timeout_ms)
                    raise BackendDownError(
                        "worker", f"no token from the worker of {record.name} in {idle_s:g} s (it may have died)"
                    )
            response = future.result()
            answered = True
            if response.error is not None:
                raise WorkerReplyError(response.error.code, response.error.message)
            yield response
        except TimeoutError:
            raise DeadlineExceededError(record.name, timeout_ms) from None
        finally:
            listener.discard(wire_id)
            if not answered:
                await self._cancel(wire_id)

    async def _cancel(self, wire_id: str) -> None:
        """Set the cancel marker of an abandoned request (best effort: the deadline stops it anyway)."""
        try:
            async with asyncio.timeout(self._b.settings.backend_timeout_s):
                await self._b.redis.set(cancel_key(self._b.names, wire_id), b"1", ex=CANCEL_TTL_S)
        except (TimeoutError, OSError, FleetError):
            pass
        except Exception:
            pass


def sampling(body: dict[str, object], *, stream: bool, chat: bool = False) -> SamplingParams:
    """The sampling settings of an OpenAI or generate body; InvalidRequestError naming the bad field."""
    stop = body.get("stop")
    stops: tuple[str, ...] = ()
    if isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    elif stop is not None:
        raise InvalidRequestError("stop must be a string or a list of strings")
    n = body.get("n", 1)
    if n not in (1, None):
        raise InvalidRequestError("n must be 1: one choice per request")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    try:
        return SamplingParams(
            max_tokens=16 if max_tokens is None else max_tokens,  # type: ignore[arg-type]
            temperature=1.0 if body.get("temperature") is None else body["temperature"],  # type: ignore[arg-type]
            top_p=1.0 if body.get("top_p") is None else body["top_p"],  # type: ignore[arg-type]
            seed=body.get("seed"),  # type: ignore[arg-type]
            stop=stops,
            stream=stream,
            chat=chat,
        )
    except FleetError as exc:
        raise InvalidRequestError(exc.message) from None


def chat_messages(body: dict[str, object]) -> str:
    """The chat's messages as the JSON prompt the worker puts in the model's chat template."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list")
    plain = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError("each message needs a role and a content")
        content = message.get("content")
        if isinstance(content, list):  # content parts: the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise InvalidRequestError("a message's content must be text")
        plain.append({"role": message["role"], "content": content})
    return json.dumps(plain)


__all__ = ["ErrorCode", "Generated", "GenerationPath", "chat_messages", "generated", "sampling"]
