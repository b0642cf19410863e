"""Generation over HTTP: OIP's generate extension and OpenAI-compatible routes, streamed as server-sent events.

- ``POST /v2/models/{model}/generate`` and ``/generate_stream``: body ``{"text_input": "...", "parameters":
  {"max_tokens", "temperature", "top_p", "seed", "stop"}}``; the answer ``{"model_name", "model_version",
  "text_output"}``, or one such event per piece of text (``data: {...}``) for the stream.
- ``GET /v1/models``; ``POST /v1/completions`` and ``/v1/chat/completions`` (``stream`` or not; ``max_tokens``,
  ``temperature``, ``top_p``, ``stop``, ``seed``, ``n`` = 1; ``usage``); ``POST /v1/embeddings`` over a
  ``feature-extraction`` model. Errors have OpenAI's body ``{"error": {"message", "type", "param", "code"}}``;
  an error after a stream started is its last event. The API key is the same ``Authorization: Bearer`` key
  (the auth middleware checks it); the key's allow-list and the request rate limits apply to the body's model.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from schemas import HTTP_STATUS, FleetError, ModelRecord, Tensor
from schemas.generation import SamplingParams, StreamChunk
from schemas.oip.request import InferBody
from schemas.text_models import FEATURE_EXTRACTION, TEXT_GENERATION

from .auth import API_KEY, Guard, presented_secret
from .errors import WIRE_ID_KEY, InvalidRequestError
from .generation_path import Generated, GenerationPath, chat_messages, generated, sampling
from .infer_path import InferPath

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_error"}  # fmt: skip


def openai_error(exc: FleetError) -> tuple[int, dict[str, Any]]:
    """OpenAI's error body for ``exc`` and its HTTP status."""
    status = HTTP_STATUS.get(exc.code, 500)
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return status, {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code.value}}


class GenerationRoutes:
    """The generate and ``/v1`` routes of one gateway."""

    def __init__(self, path: GenerationPath, infer: InferPath, guard: Guard) -> None:
        self._path = path
        self._infer = infer
        self._guard = guard

    def add_to(self, app: web.Application) -> None:
        """Register the routes."""
        app.router.add_post("/v2/models/{model}/generate", self.generate)
        app.router.add_post("/v2/models/{model}/generate_stream", self.generate_stream)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/embeddings", self.embeddings)

    # OIP generate -----------------------------------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/models/{model}/generate``: the whole text at once."""
        record, prompt, params, timeout = await self._oip_body(request, stream=False)
        async for item in self._path.generate(record, prompt, params, timeout_ms=timeout):
            if not isinstance(item, StreamChunk):
                result = generated(item)
                return web.json_response(
                    {
                        "model_name": record.name,
                        "model_version": record.version,
                        "text_output": result.text,
                        "finish_reason": result.finish_reason,
                        "prompt_tokens": result.prompt_tokens,
                        "completion_tokens": result.completion_tokens,
                    }
                )
        raise InvalidRequestError("no answer")  # unreachable: generate ends with the response or raises

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/models/{model}/generate_stream``: one server-sent event per piece of text."""
        record, prompt, params, timeout = await self._oip_body(request, stream=True)
        items = self._path.generate(record, prompt, params, timeout_ms=timeout)

        def event(item: StreamChunk | Any) -> dict[str, Any] | None:
            base = {"model_name": record.name, "model_version": record.version}
            if isinstance(item, StreamChunk):
                return {**base, "text_output": item.text}
            return {**base, "text_output": "", "finish_reason": generated(item).finish_reason}

        return await _sse(request, items, event, lambda exc: {"error": exc.message, "code": exc.code.value})

    async def _oip_body(self, request: web.Request, *, stream: bool) -> tuple[ModelRecord, str, SamplingParams, float]:
        model = request.match_info["model"]
        body = await _json(request)
        prompt = body.get("text_input")
        if not isinstance(prompt, str):
            raise InvalidRequestError("text_input must be a string")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidRequestError("parameters must be an object")
        await self._guard.authorize(presented_secret(request), model, infer=True)
        record = await self._path.record(model)
        fields = {"temperature": 0.0, **parameters}
        timeout = self._path.timeout_ms(_number(parameters.get("timeout_ms")))
        return record, prompt, sampling(fields, stream=stream), timeout

    # OpenAI -----------------------------------------------------------------------------------------------
    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``: the registered models (those the key may use)."""
        try:
            records = await self._path.models()
        except FleetError as exc:
            return _openai_failure(exc)
        key = request.get(API_KEY)
        data = [
            {"id": r.name, "object": "model", "created": int(r.created_ms / 1000), "owned_by": "fleet"}
            for r in records
            if key is None or key.allows(r.name)
        ]
        return web.json_response({"object": "list", "data": data})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``."""
        return await self._openai_generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        return await self._openai_generate(request, chat=True)

    async def _openai_generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = await _json(request)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidRequestError("model is required")
            if chat:
                prompt = chat_messages(body)
            else:
                raw = body.get("prompt")
                if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
                    raw = raw[0]
                if not isinstance(raw, str):
                    raise InvalidRequestError("prompt must be a string (one prompt per request)")
                prompt = raw
            stream = bool(body.get("stream", False))
            params = sampling(body, stream=stream, chat=chat)
            key = await self._guard.authorize(presented_secret(request), model, infer=True)
            await self._guard.limit_tokens(key, model, estimated_tokens(prompt) + params.max_tokens)
            record = await self._path.record(model)
        except FleetError as exc:
            return _openai_failure(exc)
        created = int(time.time())
        ident = ("chatcmpl-" if chat else "cmpl-") + request.get(WIRE_ID_KEY, str(created))
        items = self._path.generate(record, prompt, params, timeout_ms=self._path.timeout_ms(None))
        if not stream:
            try:
                async for item in items:
                    if not isinstance(item, StreamChunk):
                        result = generated(item)
            except FleetError as exc:
                return _openai_failure(exc)
            return web.json_response(completion_body(ident, created, record.name, result, chat=chat))
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if isinstance(
            body.get("stream_options"), dict) else False  # fmt: skip
        first = [True]

        def event(item: StreamChunk | Any) -> dict[str, Any] | list[dict[str, Any]] | None:
            base = {"id": ident, "object": chunk_kind, "created": created, "model": record.name}
            if isinstance(item, StreamChunk):
                if chat:
                    delta: dict[str, Any] = {"content": item.text}
                    if first[0]:
                        delta["role"] = "assistant"
                        first[0] = False
                    choice = {"index": 0, "delta": delta, "finish_reason": None}
                else:
                    choice = {"index": 0, "text": item.text, "logprobs": None, "finish_reason": None}
                return {**base, "choices": [choice]}
            result = generated(item)
            last = {"index": 0, "delta": {}, "finish_reason": result.finish_reason} if chat else {
                "index": 0, "text": "", "logprobs": None, "finish_reason": result.finish_reason}  # fmt: skip
            events = [{**base, "choices": [last]}]
            if include_usage:
                usage = {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                }
                events.append({**base, "choices": [], "usage": usage})
            return events

        return await _sse(request, items, event, lambda exc: openai_error(exc)[1], done=True)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/embeddings`` over a feature-extraction model (``input``: a string or a list of strings)."""
        try:
            body = await _json(request)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidRequestError("model is required")
            texts = body.get("input")
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise InvalidRequestError("input must be a string or a non-empty list of strings")
            encoding = body.get("encoding_format") or "float"
            if encoding not in ("float", "base64"):
                raise InvalidRequestError("encoding_format must be float or base64")
            key = await self._guard.authorize(presented_secret(request), model, infer=True)
            await self._guard.limit_tokens(key, model, sum(estimated_tokens(t) for t in texts))
            await self._path.record(model, task=FEATURE_EXTRACTION)
            array = np.empty(len(texts), dtype=object)
            array[:] = [t.encode() for t in texts]
            infer = InferBody(inputs=(Tensor.from_numpy("text", array),))
            served = await self._infer.infer(model, None, infer, sum(len(t) for t in texts), None)
        except FleetError as exc:
            return _openai_failure(exc)
        vectors = {t.name: t.to_numpy() for t in served.response.outputs}["embedding"]
        return web.json_response(embedding_body(model, vectors, texts, encoding))


def completion_body(ident: str, created: int, model: str, result: Generated, *, chat: bool) -> dict[str, Any]:
    """The body of a (chat) completion that is not streamed."""
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": result.text}}
    else:
        choice = {"index": 0, "text": result.text, "logprobs": None}
    choice["finish_reason"] = result.finish_reason
    usage = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
    kind = "chat.completion" if chat else "text_completion"
    return {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice], "usage": usage}


def embedding_body(model: str, vectors: Any, texts: list[str] | None, encoding: str) -> dict[str, Any]:
    """The body of an embeddings answer (``usage`` counts the texts' words: the gateway has no tokenizer)."""
    data = [{"object": "embedding", "index": i, "embedding": _vector(row, encoding)} for i, row in enumerate(vectors)]
    tokens = sum(len(t.split()) for t in texts or ())
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return body


def _vector(row: Any, encoding: str) -> list[float] | str:
    """One embedding as JSON numbers, or as base64 of its little-endian float32 bytes (what the SDKs ask for)."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode()
    return [float(x) for x in row]


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def estimated_tokens(text: str) -> int:
    """A text's model tokens as the token rate limits count them: one per 4 bytes of UTF-8, at least 1 (the
    gateway has no tokenizer; the worker counts the real ones in ``usage``)."""
    return max(1, -(-len(text.encode()) // 4))


def _openai_failure(exc: FleetError) -> web.Response:
    status, body = openai_error(exc)
    return web.json_response(body, status=status, headers=getattr(exc, "headers", None))


async def _sse(
    request: web.Request,
    items: AsyncIterator[Any],
    event: Any,
    failure: Any,
    *,
    done: bool = False,
) -> web.StreamResponse:
    """Relay ``items`` as server-sent events; an error before the first event is a plain error answer.

    A caller that disconnects closes ``items`` (the generation's cancel marker is set there).
    """
    response: web.StreamResponse | None = None
    try:
        async for item in items:
            payload = event(item)
            if response is None:
                response = web.StreamResponse(headers=_SSE_HEADERS)
                await response.prepare(request)
            for one in payload if isinstance(payload, list) else [payload]:
                await response.write(b"data: " + orjson.dumps(one) + b"\n\n")
    except ConnectionResetError:  # the caller went away: closing ``items`` cancels the generation
        return response if response is not None else web.Response(status=499)
    except FleetError as exc:
        if response is None:
            status, _ = openai_error(exc)
            return web.json_response(failure(exc), status=status)
        await response.write(b"data: " + json.dumps(failure(exc)).encode() + b"\n\n")
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    if response is None:  # nothing came (cannot happen: the generation ends with its answer or an error)
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
    if done:
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


__all__ = ["GenerationRoutes", "TEXT_GENERATION", "completion_body", "embedding_body", "openai_error"]


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI path items of these routes (``gateway.openapi`` adds them to the document)."""
    json_object = {"type": "object"}
    error = {
        "type": "object",
        "properties": {"error": {"type": ["object", "string"]}, "code": {"type": "string"}},
        "required": ["error"],
    }
    errors = {
        str(status): {"description": "An error", "content": {"application/json": {"schema": error}}}
        for status in (400, 401, 403, 404, 429, 499, 503, 504)
    }

    def operation(summary: str, ident: str, *, stream: bool, model: bool = False, body: bool = True) -> dict[str, Any]:
        content: dict[str, Any] = {"application/json": {"schema": json_object}}
        if stream:
            content["text/event-stream"] = {"schema": {"type": "string"}}
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": ident,
            "responses": {"200": {"description": summary, "content": content}, **errors},
        }
        if model:
            op["parameters"] = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
        if body:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": json_object}}}
        return op

    return {
        "/v2/models/{model}/generate": {
            "post": operation("Generate text (OIP generate)", "generate", stream=False, model=True)
        },
        "/v2/models/{model}/generate_stream": {
            "post": operation("Generate text as server-sent events", "generateStream", stream=True, model=True)
        },
        "/v1/models": {"get": operation("Models (OpenAI)", "openaiModels", stream=False, body=False)},
        "/v1/completions": {"post": operation("Text completion (OpenAI)", "openaiCompletions", stream=True)},
        "/v1/chat/completions": {"post": operation("Chat completion (OpenAI)", "openaiChatCompletions", stream=True)},
        "/v1/embeddings": {"post": operation("Embeddings (OpenAI)", "openaiEmbeddings", stream=False)},
    }
