"""Where OpenAI batches run: a supervised routine in every gateway, one gateway per batch through a Redis lease.

Each gateway's :class:`BatchRunner` looks at the active batches every ``batch_poll_s`` and takes the lease of those
nobody drives (at most ``batch_max_running`` at once per gateway). The holder renews the lease every third of
``batch_lease_s``; a gateway that dies stops renewing, and another gateway takes the batch over within about
``batch_lease_s + batch_poll_s`` and resumes it from its last checkpoint (a gateway that stops cleanly gives the
lease back at once).

A :class:`BatchDriver` runs one batch as ``fleet batch run`` runs a file, with the same guarantees:

* **validating**: every line is a JSON object with a unique ``custom_id``, ``method`` POST and the batch's
  ``url``; otherwise the batch fails with the lines named in ``errors``. A line whose ``body`` is bad (no model,
  an unknown one, bad messages) is not a validation failure: it is answered in the error file.
* **in_progress**: each line is one request on its model's **bulk lane** (interactive traffic is served first),
  on behalf of the API key that created the batch: a line for a model outside the key's allow-list is answered
  403 ``permission_error`` in the error file (401 once the key is revoked or deleted), and each line takes the
  key's and the model's request and token budgets (``gateway.auth``) as a ``/v1`` request would, except that it
  waits for the budget instead of failing with 429 (a batch has its completion window to run in),
  with the request id ``{run}-{line}``; at most ``batch_window`` lines are in flight. Answers come back on the
  batch's own reply stream in any order and are released in line order (a line is written at most once). Every
  ``batch_checkpoint_s`` the released lines are written to the store as new parts of the output and error files,
  then the checkpoint (lines done, input offset, counts, parts) is committed under the lease. A resumed run starts
  at the checkpoint; lines it may have sent before (below ``resend_until``, which the submitter never passes
  before the next checkpoint) are looked up first among the results the workers stored (the first answer wins:
  a line re-sent is answered once).
* **finalizing**: the parts are joined into the output file and the error file; **completed** names them.
* **cancelling** (``POST /v1/batches/{id}/cancel``): nothing more is sent, generations in flight get their cancel
  marker, answers that arrive within ``batch_cancel_grace_s`` are kept; **cancelled** names the files of what ran.
* **expired**: a batch not done within its completion window (24 h) stops like a cancelled one, and each line not
  answered gets the error ``batch_expired`` in the error file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from common import Backoff, BackoffPolicy
from common.reply_stream import ReplyStream
from schemas import (
    ErrorCode,
    FleetError,
    InferenceRequest,
    InferenceResponse,
    Lane,
    ReplyAddress,
    ReplyKind,
    SchemaError,
    Tensor,
    now_ms,
)
from schemas.apikeys import ApiKey, ApiKeyStore
from schemas.constants import RESULT_TTL_S
from schemas.generation import CANCEL_TTL_S, cancel_key
from schemas.text_models import FEATURE_EXTRACTION

from .auth import ForbiddenError, Guard, UnauthenticatedError
from .backends import Backends
from .batch_state import FINAL, BatchRecord, BatchStore, Progress
from .errors import InvalidRequestError
from .files import FileStore
from .generation_path import GenerationPath, chat_messages, generated, sampling
from .openai_routes import completion_body, embedding_body, estimated_tokens, openai_error
from .ratelimit import TokenBuckets

log = logging.getLogger("fleet.gateway")

#: Errors of a line's publish that pass (the broker or Redis briefly unreachable or busy): the line is sent again
#: after a pause instead of failing, since a batch has its window to run in.
RETRIABLE_PUBLISH = frozenset({ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.OVERLOADED})
PUBLISH_RETRY = BackoffPolicy(first_s=0.2, max_s=5.0, factor=2.0, jitter=0.2)

_READ_LINES = 256
#: Most validation errors listed in a failed batch's ``errors``.
_MAX_ERRORS = 100


class LineError(FleetError):
    """A line's failure with the code the worker (or this runner) gave it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message, code=code)


class LeaseLostError(Exception):
    """Another gateway drives the batch now: this one stops without writing anything more."""


@dataclass(frozen=True, slots=True)
class Line:
    """One answered (or refused) line, as it goes to the output or the error file."""

    custom_id: str
    ok: bool
    json_line: bytes


def file_object(file_id: str, size: int, filename: str, purpose: str, owner: str = "") -> dict[str, Any]:
    """An OpenAI file object (with the owner's key id, which the routes do not show)."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
        "owner": owner,
    }


def validate_lines(lines: Iterable[bytes], endpoint: str) -> tuple[int, list[dict[str, Any]]]:
    """Count the input's lines and list what makes it unusable (at most ``_MAX_ERRORS``); blocking-free."""
    seen: set[str] = set()
    errors: list[dict[str, Any]] = []
    count = 0

    def bad(line_no: int, code: str, message: str, param: str | None = None) -> None:
        if len(errors) < _MAX_ERRORS:
            errors.append({"code": code, "message": message, "param": param, "line": line_no})

    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        count += 1
        try:
            obj = json.loads(raw)
        except ValueError:
            bad(number, "invalid_json_line", "this line is not JSON")
            continue
        if not isinstance(obj, dict):
            bad(number, "invalid_json_line", "this line is not a JSON object")
            continue
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            bad(number, "missing_required_parameter", "custom_id must be a non-empty string", "custom_id")
        elif custom_id in seen:
            bad(number, "duplicate_custom_id", f"custom_id {custom_id!r} is used by an earlier line", "custom_id")
        else:
            seen.add(custom_id)
        if obj.get("method") != "POST":
            bad(number, "invalid_method", "method must be POST", "method")
        if obj.get("url") != endpoint:
            bad(number, "mismatched_endpoint", f"url must be the batch's endpoint {endpoint}", "url")
        if not isinstance(obj.get("body"), dict):
            bad(number, "missing_required_parameter", "body must be a JSON object", "body")
    if count == 0:
        errors.append({"code": "empty_file", "message": "the input file has no lines", "param": None, "line": None})
    return count, errors


class BatchDriver:
    """Runs one batch while this gateway holds its lease."""

    def __init__(self, runner: BatchRunner, record: BatchRecord, token: str) -> None:
        self._r = runner
        self._rec = record
        self._token = token
        self._id: str = record.doc["id"]
        self._doc = dict(record.doc)
        self._progress = record.progress
        self._held: dict[int, Line] = {}  # answered lines waiting for the ones before them
        self._released: list[Line] = []  # released since the last checkpoint
        self._next = self._progress.done  # next line to release
        self._offset = self._progress.offset
        self._offsets: dict[int, int] = {}  # line -> input offset just past it
        self._pending: dict[int, tuple[str, float, bool]] = {}  # line -> (custom_id, deadline, generation)
        self._sent_end = self._next  # lines below were read (sent or answered)
        self._advanced = asyncio.Event()
        self._checkpoint_due = asyncio.Event()
        self._read_all = False
        self._seq = len(self._progress.out_parts) + len(self._progress.err_parts)
        self._cancel_checked = -float("inf")
        self._key: ApiKey | None = None
        self._key_read = -float("inf")

    # the run ----------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Drive the batch to a final status (LeaseLostError when another gateway took it over)."""
        if self._rec.cancel_at is not None and self._doc["status"] == "validating":
            await self._finish("cancelled")
            return
        if self._doc["status"] == "validating":
            await self._validate()
            if self._doc["status"] == "failed":
                return
        if self._doc["status"] == "in_progress":
            stream = self._r.names.client_reply_stream(f"batch-{self._id}")
            reader = ReplyStream(self._r.backends.settings.fleet.redis, stream, self._on_reply, logger=log)
            await reader.seek_tail()
            await reader.start()
            try:
                stopped = await self._run_lines(stream)
            finally:
                await reader.halt()
                await reader.close(delete_stream=False)
            if stopped is not None:
                await self._finish(stopped)
                await self._drop_stream(stream)
                return
            self._doc["status"] = "finalizing"
            self._doc["finalizing_at"] = int(time.time())
            await self._commit()
            await self._drop_stream(stream)
        if self._doc["status"] == "finalizing":
            await self._finish("completed")

    async def _validate(self) -> None:
        def check() -> tuple[int, list[dict[str, Any]]]:
            with self._r.files.open(f"files/{self._doc['input_file_id']}") as fh:
                return validate_lines(fh, self._doc["endpoint"])

        try:
            total, errors = await asyncio.to_thread(check)
        except FileNotFoundError:
            total, errors = 0, [{"code": "file_not_found", "message": "the input file is gone", "param": None,
                                 "line": None}]  # fmt: skip
        now = int(time.time())
        self._doc["request_counts"] = {"total": total, "completed": 0, "failed": 0}
        if errors:
            self._doc.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
        else:
            self._doc.update(status="in_progress", in_progress_at=now)
            self._progress = Progress(run=f"{self._id}-{secrets.token_hex(4)}")
        await self._commit()

    async def _run_lines(self, stream: str) -> str | None:
        """Send every line and collect the answers; the final status when it stopped early (cancel, expiry)."""
        try:
            async with asyncio.TaskGroup() as group:
                sweeper = group.create_task(self._checkpoint_routine())
                stopped = await self._submit_all(stream)
                if stopped is None:
                    while self._next < self._doc["request_counts"]["total"]:
                        stopped = await self._stop_reason()
                        if stopped is not None:
                            break
                        self._advanced.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self._r.settings.batch_checkpoint_s):
                                await self._advanced.wait()
                if stopped is not None:
                    await self._wind_down(stopped)
                sweeper.cancel()
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        await self._checkpoint(final=stopped is not None)
        return stopped

    async def _submit_all(self, stream: str) -> str | None:
        window = self._r.settings.batch_window
        path = f"files/{self._doc['input_file_id']}"
        fh: IO[bytes] = await asyncio.to_thread(self._r.files.open, path)
        try:
            await asyncio.to_thread(fh.seek, self._offset)
            index = self._next
            offset = self._offset
            while True:
                chunk = await asyncio.to_thread(_read_lines, fh, _READ_LINES)
                if not chunk:
                    break
                stored: dict[int, InferenceResponse] = {}
                maybe_sent = [
                    i for i in range(index, index + len(chunk)) if i < self._progress.resend_until
                ]  # lines a previous run may have sent: their stored answers come first
                if maybe_sent:
                    stored = await self._stored(maybe_sent)
                for raw in chunk:
                    offset += len(raw)
                    if not raw.strip():
                        continue  # blank lines are not lines (validation skipped them too)
                    while index >= min(self._next + window, self._progress.resend_until):
                        if index >= self._progress.resend_until:
                            self._checkpoint_due.set()
                        stopped = await self._stop_reason()
                        if stopped is not None:
                            return stopped
                        self._advanced.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self._r.settings.batch_checkpoint_s):
                                await self._advanced.wait()
                    self._offsets[index] = offset
                    self._sent_end = index + 1
                    stopped = await self._send(index, raw, stream, stored.get(index))
                    if stopped is not None:  # while the line waited for its rate budget: it was not started
                        return stopped
                    index += 1
        finally:
            await asyncio.to_thread(fh.close)
        self._read_all = True
        return None

    async def _send(self, index: int, raw: bytes, stream: str, stored: InferenceResponse | None) -> str | None:
        """Send one line (or answer it); the stop reason when the batch stopped while it waited for its budget."""
        obj = json.loads(raw)
        custom_id = obj["custom_id"]
        request_id = f"{self._progress.run}-{index}"
        try:
            request, generation, tokens, key = await self._request(request_id, obj["body"], stream)
            if stored is None:  # a line a previous run sent took its budget then
                stopped = await self._take_budget(key, request.model, tokens)
                if stopped is not None:
                    return stopped
        except FleetError as exc:
            self._deliver(index, self._error_line(custom_id, request_id, exc))
            return None
        self._pending[index] = (custom_id, time.monotonic() + self._r.settings.batch_line_timeout_s, generation)
        if stored is not None:
            self._on_reply(stored)
            return None
        topic = self._r.names.request_topic(request.model, Lane.BULK)
        backoff = Backoff(PUBLISH_RETRY)
        while True:
            try:
                await self._r.backends.publisher.publish(topic, request)
                return None
            except FleetError as exc:
                if exc.code in RETRIABLE_PUBLISH and time.monotonic() < self._pending[index][1]:
                    stopped = await self._stop_reason()
                    if stopped is not None:  # cancelled or expired before the line could start
                        self._pending.pop(index, None)
                        return stopped
                    log.warning("batch line %d not sent yet (%s); trying again", index, exc.message)
                    await asyncio.sleep(backoff.next())
                    continue
                self._pending.pop(index, None)
                self._deliver(index, self._error_line(custom_id, request_id, exc))
                return None

    async def _owner_key(self) -> ApiKey | None:
        """The record of the key that created the batch (None: created with auth off), read again every
        ``auth_cache_ttl_s``; UnauthenticatedError once it is revoked or deleted."""
        owner = self._rec.owner
        if not owner or self._r.guard is None:
            return None
        now = time.monotonic()
        if now - self._key_read >= self._r.settings.auth_cache_ttl_s:
            try:
                self._key = await self._r.keys.get(owner)
            except FleetError as exc:  # a damaged record, as the middleware treats it
                raise UnauthenticatedError(exc.message) from None
            self._key_read = now
        if self._key is None:
            raise UnauthenticatedError(f"API key {owner!r}, which created the batch, no longer exists")
        if self._key.revoked:
            raise UnauthenticatedError(f"API key {owner!r}, which created the batch, was revoked")
        return self._key

    async def _take_budget(self, key: ApiKey | None, model: str, tokens: int) -> str | None:
        """Take one request and ``tokens`` tokens from the key's and the model's buckets, waiting while one is
        short (never a 429: the batch has its window); the stop reason when the batch stopped meanwhile."""
        guard = self._r.guard
        if guard is None:
            return None
        for buckets, amount in ((guard.buckets(key, model), 1), (guard.token_buckets(key, model), tokens)):
            while buckets:
                verdict = await self._r.buckets.take(buckets, amount)
                if verdict.allowed or verdict.limiting is None:
                    break
                stopped = await self._stop_reason()
                if stopped is not None:
                    return stopped
                wait_s = min(verdict.retry_after_ms / 1000, self._r.settings.batch_checkpoint_s)
                await asyncio.sleep(max(0.01, wait_s))
        return None

    async def _request(
        self, request_id: str, body: dict[str, Any], stream: str
    ) -> tuple[InferenceRequest, bool, int, ApiKey | None]:
        """The line's request, whether it generates, its tokens as the token rate limits count them, and the key
        it runs for (refused as the /v1 routes refuse it: allow-list before the model is looked up)."""
        endpoint = self._doc["endpoint"]
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("model is required")
        key = await self._owner_key()
        if key is not None and not key.allows(model):
            raise ForbiddenError(key, model)
        parameters: dict[str, Any] = {}
        if endpoint == "/v1/embeddings":
            texts = body.get("input")
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise InvalidRequestError("input must be a string or a non-empty list of strings")
            if (body.get("encoding_format") or "float") not in ("float", "base64"):
                raise InvalidRequestError("encoding_format must be float or base64")
            record = await self._r.path.record(model, task=FEATURE_EXTRACTION)
            values = [t.encode() for t in texts]
            generation = False
            tokens = sum(estimated_tokens(t) for t in texts)
        else:
            chat = endpoint == "/v1/chat/completions"
            raw: Any = chat_messages(body) if chat else body.get("prompt")
            if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
                raw = raw[0]
            if not isinstance(raw, str):
                raise InvalidRequestError("prompt must be a string (one prompt per request)")
            prompt: str = raw
            params = sampling(body, stream=False, chat=chat)
            parameters = dict(params.to_parameters())
            record = await self._r.path.record(model)
            values = [prompt.encode()]
            generation = True
            tokens = estimated_tokens(prompt) + params.max_tokens
        array = np.empty(len(values), dtype=object)
        array[:] = values
        started = now_ms()
        request = InferenceRequest(
            id=request_id,
            model=record.name,
            version=record.version,
            inputs=(Tensor.from_numpy("text", array),),
            reply=ReplyAddress(ReplyKind.STREAM, stream, RESULT_TTL_S),  # stored: a resumed run reads it back
            parameters=parameters,
            deadline_ms=started + self._r.settings.batch_line_timeout_s * 1000,
            created_ms=started,
        )
        return request, generation, tokens, key

    async def _stored(self, indices: list[int]) -> dict[int, InferenceResponse]:
        names, redis = self._r.names, self._r.backends.redis
        ids = [f"{self._progress.run}-{i}" for i in indices]
        async with redis.pipeline(transaction=False) as pipe:
            for request_id in ids:
                pipe.get(names.result_key(request_id))
            raw = await pipe.execute()
        found: dict[int, InferenceResponse] = {}
        for index, value in zip(indices, raw, strict=True):
            if value is not None:
                with contextlib.suppress(SchemaError):
                    found[index] = InferenceResponse.from_bytes(value)
        return found

    # answers ----------------------------------------------------------------------------------------------
    def _on_reply(self, response: InferenceResponse) -> None:
        prefix, _, number = response.id.rpartition("-")
        if prefix != self._progress.run or not number.isdigit():
            return
        index = int(number)
        pending = self._pending.pop(index, None)
        if pending is None:
            return  # answered already (a redelivery's second answer), or not sent by this run
        custom_id = pending[0]
        if response.error is not None:
            exc = LineError(response.error.code, response.error.message)
            self._deliver(index, self._error_line(custom_id, response.id, exc))
            return
        try:
            body = self._body(response)
        except (FleetError, KeyError, ValueError) as exc:
            error = LineError(ErrorCode.INTERNAL, f"unreadable answer: {exc}")
            self._deliver(index, self._error_line(custom_id, response.id, error))
            return
        line = {
            "id": f"batch_req_{response.id}",
            "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": response.id, "body": body},
            "error": None,
        }
        self._deliver(index, Line(custom_id, True, json.dumps(line).encode() + b"\n"))

    def _body(self, response: InferenceResponse) -> dict[str, Any]:
        endpoint = self._doc["endpoint"]
        created = int(time.time())
        if endpoint == "/v1/embeddings":
            vectors = {t.name: t.to_numpy() for t in response.outputs}["embedding"]
            return embedding_body(response.model, vectors, None, "float")
        chat = endpoint == "/v1/chat/completions"
        ident = ("chatcmpl-" if chat else "cmpl-") + response.id
        return completion_body(ident, created, response.model, generated(response), chat=chat)

    def _error_line(self, custom_id: str, request_id: str, exc: FleetError) -> Line:
        status, body = openai_error(exc)
        line = {
            "id": f"batch_req_{request_id}",
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        return Line(custom_id, False, json.dumps(line).encode() + b"\n")

    def _deliver(self, index: int, line: Line) -> None:
        if index < self._next or index in self._held:
            return
        self._held[index] = line
        while self._next in self._held:
            self._released.append(self._held.pop(self._next))
            self._offset = self._offsets.pop(self._next, self._offset)
            self._next += 1
        self._advanced.set()

    # checkpoints, deadlines, cancel -----------------------------------------------------------------------
    async def _checkpoint_routine(self) -> None:
        interval = self._r.settings.batch_checkpoint_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            self._expire_lines()
            await self._checkpoint()

    def _expire_lines(self) -> None:
        now = time.monotonic()
        for index, (custom_id, deadline, _) in list(self._pending.items()):
            if deadline <= now:
                del self._pending[index]
                timeout = self._r.settings.batch_line_timeout_s
                exc = LineError(ErrorCode.DEADLINE_EXCEEDED, f"no answer within {timeout:g} s")
                self._deliver(index, self._error_line(custom_id, f"{self._progress.run}-{index}", exc))

    async def _checkpoint(self, *, final: bool = False) -> None:
        """Write the lines released since the last checkpoint as new parts, then commit (never the other way)."""
        if final:  # a stopped batch keeps what was answered beyond a gap too
            self._released += [self._held.pop(i) for i in sorted(self._held)]
        # Cleared only once written: a checkpoint cancelled half-way leaves them for the next one.
        released = list(self._released)
        out = [line.json_line for line in released if line.ok]
        err = [line.json_line for line in released if not line.ok]
        progress = self._progress
        out_parts, err_parts = list(progress.out_parts), list(progress.err_parts)
        for lines, parts, kind in ((out, out_parts, "out"), (err, err_parts, "err")):
            if lines:
                self._seq += 1
                name = f"batches/{self._id}/{kind}-{self._seq:06d}-{secrets.token_hex(4)}.jsonl"
                await asyncio.to_thread(self._r.files.write, name, lines)
                parts.append(name)
        window = self._r.settings.batch_window
        self._progress = progress.advance(
            done=self._next,
            offset=self._offset,
            completed=progress.completed + len(out),
            failed=progress.failed + len(err),
            resend_until=self._next + 2 * window,
            out_parts=tuple(out_parts),
            err_parts=tuple(err_parts),
        )
        await self._commit()
        del self._released[: len(released)]
        self._advanced.set()

    async def _stop_reason(self) -> str | None:
        """``expired`` or ``cancelled`` when the batch must stop (Redis is asked at most once a checkpoint)."""
        if time.time() >= self._doc["expires_at"]:
            return "expired"
        now = time.monotonic()
        if self._rec.cancel_at is None and now - self._cancel_checked >= self._r.settings.batch_checkpoint_s:
            self._cancel_checked = now
            record = await self._r.store.get(self._id)
            if record is not None:
                self._rec.cancel_at = record.cancel_at
        return "cancelled" if self._rec.cancel_at is not None else None

    async def _wind_down(self, status: str) -> None:
        """Stop a cancelled or expired batch: cancel generations in flight, keep answers that come in time."""
        redis, names = self._r.backends.redis, self._r.names
        for index, (_, _, generation) in list(self._pending.items()):
            if generation:
                with contextlib.suppress(Exception):
                    await redis.set(cancel_key(names, f"{self._progress.run}-{index}"), b"1", ex=CANCEL_TTL_S)
        deadline = time.monotonic() + self._r.settings.batch_cancel_grace_s
        while self._pending and time.monotonic() < deadline:
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await self._advanced.wait()
        if status == "expired":  # every line not answered is answered with batch_expired
            await self._expire_rest()
        self._pending.clear()

    async def _expire_rest(self) -> None:
        def custom_ids() -> list[tuple[int, str]]:
            found: list[tuple[int, str]] = []
            with self._r.files.open(f"files/{self._doc['input_file_id']}") as fh:
                index = 0
                for raw in fh:
                    if not raw.strip():
                        continue
                    if index >= self._next and index not in self._held:
                        found.append((index, json.loads(raw)["custom_id"]))
                    index += 1
            return found

        for index, custom_id in await asyncio.to_thread(custom_ids):
            line = {
                "id": f"batch_req_{self._progress.run}-{index}",
                "custom_id": custom_id,
                "response": None,
                "error": {"code": "batch_expired", "message": "This request could not be executed before the "
                          "completion window expired."},  # fmt: skip
            }
            self._held[index] = Line(custom_id, False, json.dumps(line).encode() + b"\n")

    async def _finish(self, status: str) -> None:
        """Join the parts into the output and error files and commit the final status."""
        progress, files = self._progress, self._r.files
        owner = self._rec.owner
        for kind, parts, purpose_key in (("output", progress.out_parts, "output_file_id"),
                                         ("error", progress.err_parts, "error_file_id")):  # fmt: skip
            if not parts:
                continue
            file_id = f"file-{self._id.removeprefix('batch_')}-{kind}"
            size = await asyncio.to_thread(files.concat, f"files/{file_id}", list(parts))
            meta = file_object(file_id, size, f"{self._id}_{kind}.jsonl", "batch_output", owner)
            await asyncio.to_thread(files.write_json, f"files/{file_id}.json", meta)
            self._doc[purpose_key] = file_id
        now = int(time.time())
        self._doc["status"] = status
        self._doc[{"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[status]] = now
        if status == "cancelled" and self._rec.cancel_at is not None:
            self._doc["cancelling_at"] = self._rec.cancel_at
        self._doc["request_counts"] = {
            "total": self._doc["request_counts"]["total"],
            "completed": progress.completed,
            "failed": progress.failed,
        }
        await self._commit()
        await asyncio.to_thread(files.delete_prefix, f"batches/{self._id}")

    async def _commit(self) -> None:
        if not await self._r.store.commit(self._id, self._token, self._doc, self._progress):
            raise LeaseLostError(self._id)

    async def _drop_stream(self, stream: str) -> None:
        with contextlib.suppress(Exception):
            await self._r.backends.redis.delete(stream)


def _read_lines(fh: IO[bytes], count: int) -> list[bytes]:
    lines: list[bytes] = []
    for _ in range(count):
        raw = fh.readline()
        if not raw:
            break
        lines.append(raw)
    return lines


class BatchRunner:
    """This gateway's share of the batches: ``start()`` its scan routine, ``stop()`` it (commits, releases)."""

    def __init__(
        self, backends: Backends, path: GenerationPath, files: FileStore, guard: Guard | None = None
    ) -> None:
        self.backends = backends
        self.guard = guard  # the batch's key's allow-list and the rate limits apply to its lines (None: neither)
        self.keys = ApiKeyStore(backends.redis, backends.names)
        self.buckets = TokenBuckets(backends.redis)
        self.settings = backends.settings
        self.names = backends.names
        self.path = path
        self.files = files
        self.store = BatchStore(backends.redis, backends.names)
        self._token = f"{self.settings.gateway_id}-{secrets.token_hex(4)}"
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for new batches now (a batch was created through this gateway)."""
        self._wake.set()

    async def start(self) -> None:
        """Start the scan routine."""
        if self._task is None:
            self._task = asyncio.create_task(self._scan_routine(), name="fleet-batches")

    async def stop(self) -> None:
        """Stop driving: each driver commits what it has, gives its lease back; idempotent."""
        self._closing.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        drivers = list(self._driving.values())
        for driver in drivers:
            driver.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)

    async def _scan_routine(self) -> None:
        poll = self.settings.batch_poll_s
        while not self._closing.is_set():
            try:
                await self._scan()
            except Exception as exc:  # Redis down: try again next round
                log.warning("batch scan failed", extra={"error": str(exc)})
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wake.wait()

    async def _scan(self) -> None:
        lease_ms = int(self.settings.batch_lease_s * 1000)
        for batch_id in await self.store.active():
            if len(self._driving) >= self.settings.batch_max_running:
                return
            if batch_id in self._driving or not await self.store.acquire(batch_id, self._token, lease_ms):
                continue
            self._driving[batch_id] = asyncio.create_task(self._drive(batch_id), name=f"fleet-batch-{batch_id}")

    async def _drive(self, batch_id: str) -> None:
        """Run one batch while renewing its lease; supervised: a failure is logged and the lease given back."""
        lease_ms = int(self.settings.batch_lease_s * 1000)
        try:
            record = await self.store.get(batch_id)
            if record is None or record.doc["status"] in FINAL:
                return
            driver = BatchDriver(self, record, self._token)
            work = asyncio.create_task(driver.run())
            try:
                while not work.done():
                    done, _ = await asyncio.wait({work}, timeout=self.settings.batch_lease_s / 3)
                    if not done and not await self.store.renew(batch_id, self._token, lease_ms):
                        raise LeaseLostError(batch_id)
                await work
            finally:
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(BaseException):
                        await work
        except LeaseLostError:
            log.warning("lost the lease of a batch: another gateway drives it", extra={"batch": batch_id})
        except asyncio.CancelledError:
            pass  # this gateway stops: the next holder resumes from the last checkpoint
        except Exception:
            log.exception("batch driver failed; the batch will be resumed", extra={"batch": batch_id})
        finally:
            self._driving.pop(batch_id, None)
            with contextlib.suppress(Exception):
                await self.store.release(batch_id, self._token)
            if not self._closing.is_set():
                self._wake.set()
