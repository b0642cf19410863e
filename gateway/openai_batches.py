"""OpenAI's Files and Batch API on the gateway: upload a JSONL of requests, run it on the bulk lane, download.

- ``POST /v1/files`` (multipart: ``purpose`` = ``batch``, ``file``) stores the file in the file store
  (``gateway.files``: a directory or an object store, never Redis); ``GET /v1/files/{id}`` answers its file
  object, ``GET /v1/files/{id}/content`` its bytes.
- ``POST /v1/batches`` (``input_file_id``, ``endpoint`` ``/v1/chat/completions`` | ``/v1/completions`` |
  ``/v1/embeddings``, ``completion_window`` ``24h``, ``metadata``) creates a batch in status ``validating``;
  ``GET /v1/batches[/{id}]`` lists or shows batches (``limit``, ``after``), ``POST /v1/batches/{id}/cancel`` asks
  its driver to stop (``cancelling``, then ``cancelled``). The batches run in the gateways (``gateway.batch_runner``).

With auth on, files and batches belong to the API key that created them: another key gets 404. Errors have OpenAI's
body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from schemas import ErrorCode, FleetError

from .auth import API_KEY
from .batch_runner import BatchRunner, file_object
from .batch_state import ENDPOINTS, BatchStore, new_batch_doc
from .errors import BackendDownError, GatewayError, InvalidRequestError, PayloadTooLargeError
from .files import FileStore
from .openai_routes import openai_error

_CHUNK = 1 << 16
_WINDOWS = ("24h",)


class NotFoundError(GatewayError):
    """No such file or batch (or one of another API key)."""

    code = ErrorCode.JOB_NOT_FOUND

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"no {what} with id {ident!r}")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _openai(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except FleetError as exc:
            status, body = openai_error(exc)
            return web.json_response(body, status=status)
        except (OSError, TimeoutError) as exc:  # Redis or the file store
            status, body = openai_error(BackendDownError("storage", str(exc)))
            return web.json_response(body, status=status)
        except web.HTTPException as exc:  # aiohttp's own refusals (a body over client_max_size)
            if exc.status < 400:
                raise
            kind = "server_error" if exc.status >= 500 else "invalid_request_error"
            error = {"message": exc.reason.lower(), "type": kind, "param": None, "code": None}
            return web.json_response({"error": error}, status=exc.status)

    return wrapped


def _owner(request: web.Request) -> str:
    key = request.get(API_KEY)
    return key.key_id if key is not None else ""


def _public(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "owner"}


class BatchRoutes:
    """The ``/v1/files`` and ``/v1/batches`` routes of one gateway."""

    def __init__(self, files: FileStore, store: BatchStore, runner: BatchRunner | None, max_bytes: int) -> None:
        self._files = files
        self._store = store
        self._runner = runner
        self._max_bytes = max_bytes

    def add_to(self, app: web.Application) -> None:
        """Register the routes."""
        app.router.add_post("/v1/files", _openai(self.upload))
        app.router.add_get("/v1/files/{file_id}", _openai(self.file))
        app.router.add_get("/v1/files/{file_id}/content", _openai(self.content))
        app.router.add_post("/v1/batches", _openai(self.create))
        app.router.add_get("/v1/batches", _openai(self.list))
        app.router.add_get("/v1/batches/{batch_id}", _openai(self.batch))
        app.router.add_post("/v1/batches/{batch_id}/cancel", _openai(self.cancel))

    # files ------------------------------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/files``: a multipart upload of ``purpose`` and ``file``."""
        if not request.content_type.startswith("multipart/"):
            raise InvalidRequestError("upload a file as multipart/form-data with the fields purpose and file")
        purpose: str | None = None
        filename = "upload.jsonl"
        tmp: Path | None = None
        size = 0
        try:
            try:
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    if not isinstance(part, BodyPartReader):
                        continue
                    if part.name == "purpose":
                        purpose = (await part.text()).strip()
                    elif part.name == "file":
                        filename = part.filename or filename
                        if tmp is not None:  # the field sent twice: the last one counts
                            await asyncio.to_thread(tmp.unlink, True)
                            tmp = None
                        tmp, size = await self._spool(part)
            except (ValueError, HttpProcessingError) as exc:  # no boundary, a bad part header, a broken body
                raise InvalidRequestError(f"the multipart/form-data body is malformed: {exc}") from None
            if purpose != "batch":
                raise InvalidRequestError(f"purpose must be 'batch' (got {purpose!r})")
            if tmp is None or size == 0:
                raise InvalidRequestError("the field file is missing or empty")
            file_id = f"file-{secrets.token_hex(12)}"
            meta = file_object(file_id, size, filename, purpose, _owner(request))
            await asyncio.to_thread(self._files.upload, f"files/{file_id}", tmp)
            await asyncio.to_thread(self._files.write_json, f"files/{file_id}.json", meta)
        finally:
            if tmp is not None:
                await asyncio.to_thread(tmp.unlink, True)
        return web.json_response(_public(meta))

    async def _spool(self, part: BodyPartReader) -> tuple[Path, int]:
        """Write the part to a local temporary file (off the loop); 413 past ``files_max_bytes``."""
        fd, name = tempfile.mkstemp(prefix="fleet-upload-", suffix=".jsonl")
        path = Path(name)
        size = 0
        fh = os.fdopen(fd, "wb")
        try:
            while chunk := await part.read_chunk(_CHUNK):
                size += len(chunk)
                if size > self._max_bytes:
                    raise PayloadTooLargeError("the file", None, self._max_bytes, "FLEET_GATEWAY_FILES_MAX_BYTES")
                await asyncio.to_thread(fh.write, chunk)
        except BaseException:
            await asyncio.to_thread(fh.close)
            await asyncio.to_thread(path.unlink, True)
            raise
        await asyncio.to_thread(fh.close)
        return path, size

    async def _meta(self, request: web.Request, file_id: str) -> dict[str, Any]:
        if not file_id.startswith("file-") or "/" in file_id:
            raise NotFoundError("file", file_id)
        meta = await asyncio.to_thread(self._files.read_json, f"files/{file_id}.json")
        if meta is None or meta.get("owner", "") != _owner(request):
            raise NotFoundError("file", file_id)
        return meta

    async def file(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/files/{id}``: the file object."""
        return web.json_response(_public(await self._meta(request, request.match_info["file_id"])))

    async def content(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/files/{id}/content``: the file's bytes."""
        file_id = request.match_info["file_id"]
        meta = await self._meta(request, file_id)
        fh = await asyncio.to_thread(self._files.open, f"files/{file_id}")
        try:
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = int(meta["bytes"])
            await response.prepare(request)
            while chunk := await asyncio.to_thread(fh.read, _CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            await asyncio.to_thread(fh.close)

    # batches ----------------------------------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/batches``."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("the body must be a JSON object")
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise InvalidRequestError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
        window = body.get("completion_window")
        if window not in _WINDOWS:
            raise InvalidRequestError("completion_window must be 24h")
        metadata = body.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and len(metadata) <= 16 and all(isinstance(v, str) for v in metadata.values())
        ):
            raise InvalidRequestError("metadata must be an object of at most 16 string values")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str):
            raise InvalidRequestError("input_file_id is required")
        meta = await self._meta(request, file_id)
        if meta.get("purpose") != "batch":
            raise InvalidRequestError(f"file {file_id!r} was not uploaded with purpose 'batch'")
        doc = new_batch_doc(f"batch_{secrets.token_hex(12)}", file_id, endpoint, window, metadata)
        await self._store.create(doc, _owner(request))
        if self._runner is not None:
            self._runner.wake()
        return web.json_response(doc)

    async def _record(self, request: web.Request, batch_id: str) -> dict[str, Any]:
        record = await self._store.get(batch_id)
        if record is None or record.owner != _owner(request):
            raise NotFoundError("batch", batch_id)
        return record.view()

    async def batch(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/batches/{id}``."""
        return web.json_response(await self._record(request, request.match_info["batch_id"]))

    async def list(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/batches?limit=&after=``: newest first."""
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            raise InvalidRequestError("limit must be an integer") from None
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be in 1..100")
        after = request.query.get("after")
        data: list[dict[str, Any]] = []
        more = True
        while len(data) < limit and more:
            ids, more = await self._store.ids(after, limit - len(data))
            if not ids:
                break
            for batch_id in ids:
                record = await self._store.get(batch_id)
                if record is not None and record.owner == _owner(request):
                    data.append(record.view())
            after = ids[-1]
        first = data[0]["id"] if data else None
        last = data[-1]["id"] if data else None
        return web.json_response({"object": "list", "data": data, "first_id": first, "last_id": last,
                                  "has_more": more})  # fmt: skip

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/batches/{id}/cancel``: ``cancelling`` until its driver stopped it (a final batch as it is)."""
        batch_id = request.match_info["batch_id"]
        await self._record(request, batch_id)
        await self._store.request_cancel(batch_id)
        if self._runner is not None:
            self._runner.wake()
        return web.json_response(await self._record(request, batch_id))
