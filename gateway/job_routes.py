"""Async jobs over HTTP: submit (``202`` + ``Location``), ``GET``/``DELETE /v2/jobs/{id}``, and
``GET /v2/jobs/{id}/result``: what the synchronous request would have answered (the OIP infer response,
in the binary tensor extension with ``?binary=true``; or the job's error with its HTTP status; ``409``
while the job is pending or running).

An infer request is async when it carries ``?async=true`` or ``Prefer: respond-async`` (RFC 7240).
The gateway stores the job hash (``schemas.jobs``), publishes the request with reply kind ``result``
(the worker stores the response under the result key, kept at least the job TTL) and answers at once.
Status is derived on each ``GET`` from the job hash and the stored result.

Idempotency: ``Idempotency-Key: <1-255 visible ASCII>`` maps to the first job submitted with it (for
the job TTL). A resubmit with the same model, version and body bytes gets that job back (``202``,
``Idempotent-Replayed: true``) and nothing is published again; a different request with the same key
is ``409 CONFLICT``. With auth on, idempotency keys are scoped to the API key that sends them (two
tenants may both use ``Idempotency-Key: 1``), and a job of a model outside the caller's allow-list is
``404`` on ``GET``/``DELETE``. Job ids are random (uuid4), so knowing one job id does not reveal another.

Completion webhook (only with ``FLEET_GATEWAY_WEBHOOKS=true``, else ``400``): ``X-Callback-Url`` or
``?callback_url=`` names an http(s) URL that receives the job document (``POST``, JSON) once the job
is done, failed, expired (answered by a worker) or cancelled (``gateway.webhooks``).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from aiohttp import web
from yarl import URL

from schemas import (
    ErrorCode,
    ErrorInfo,
    FleetError,
    InferenceRequest,
    InferenceResponse,
    JobState,
    JobStatus,
    Lane,
    ModelRecord,
    Names,
    ReplyAddress,
    ReplyKind,
    now_ms,
)
from schemas.constants import RESULT_TTL_S
from schemas.jobs import F_CALLBACK, F_CLIENT_ID, F_CREATED, F_DEADLINE, F_EXPIRES, F_MODEL, F_VERSION
from schemas.oip.response import response_document

from .auth import API_KEY
from .errors import BackendDownError, ConflictError, InvalidRequestError, JobNotFoundError, WorkerReplyError
from .jobs import JobStore, OutboxSweeper, republish_after_s
from .protocol import HEADER_LENGTH, InferBody, json_response, render_infer
from .publisher import RequestPublisher
from .settings import GatewaySettings

ASYNC_QUERY = "async"
BINARY_QUERY = "binary"
PREFER_HEADER = "Prefer"
RESPOND_ASYNC = "respond-async"
IDEMPOTENCY_HEADER = "Idempotency-Key"
CALLBACK_HEADER = "X-Callback-Url"
CALLBACK_QUERY = "callback_url"
REPLAYED_HEADER = "Idempotent-Replayed"
JOBS_PATH = "/v2/jobs"

log = logging.getLogger("fleet.gateway")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _flag(name: str, value: str | None) -> bool:
    """A ``?name=true|false`` query flag (absent: false); InvalidRequestError otherwise."""
    if value is None:
        return False
    flag = value.strip().lower()
    if flag in _TRUE:
        return True
    if flag not in _FALSE:
        raise InvalidRequestError(f"?{name}={value!r}: use true or false")
    return False


def wants_async(query: str | None, prefer: str | None) -> bool:
    """True when ``?async=`` is true or ``Prefer`` holds ``respond-async``; InvalidRequestError on a bad flag."""
    if _flag(ASYNC_QUERY, query):
        return True
    if prefer is not None:
        for preference in prefer.split(","):
            if preference.split(";", 1)[0].strip().lower() == RESPOND_ASYNC:
                return True
    return False


def check_idempotency_key(key: str) -> str:
    """Return ``key`` if it is 1-255 visible ASCII characters, else InvalidRequestError."""
    if not 1 <= len(key) <= 255 or not all("!" <= c <= "~" for c in key):
        raise InvalidRequestError(f"{IDEMPOTENCY_HEADER} must be 1-255 visible ASCII characters without spaces")
    return key


def fingerprint(model: str, version: str | None, header_length: str | None, raw: bytes) -> str:
    """What makes two submissions the same request: model, requested version and the exact body."""
    digest = hashlib.sha256()
    for part in (model, version or "", header_length or ""):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(raw)
    return digest.hexdigest()[:32]


def callback_url(value: str | None, allowed: bool) -> str | None:
    """The job's completion webhook (an absolute http(s) URL), or None; InvalidRequestError when refused."""
    if value is None:
        return None
    if not allowed:
        raise InvalidRequestError("completion webhooks are off on this gateway (FLEET_GATEWAY_WEBHOOKS)")
    try:
        url = URL(value)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host or len(value) > 2048:
        raise InvalidRequestError(f"{CALLBACK_HEADER} must be an absolute http(s) URL of at most 2048 characters")
    return value


def job_result_ttl_s(settings: GatewaySettings) -> int:
    """How long a job's result is kept: at least the job TTL."""
    return max(RESULT_TTL_S, settings.job_ttl_s)


def job_document(state: JobState, now: float, *, plain: bool = True) -> dict[str, Any]:
    """The JSON body of ``GET /v2/jobs/{id}`` (and of its webhook); ``plain``: data in lists, for the standard
    library's ``json``, else numpy arrays for :func:`~gateway.protocol.json_response`."""
    status = state.status(now)
    doc: dict[str, Any] = {
        "job_id": state.job_id,
        "model": state.model,
        "version": state.version,
        "status": status.value,
        "created_ms": state.created_ms,
        "started_ms": state.started_ms,
        "deadline_ms": state.deadline_ms,
        "expires_ms": state.expires_ms,
    }
    if status is JobStatus.DONE and state.response is not None:
        # The result as the sync answer's JSON, built once (not rendered and parsed back).
        blobs: list[bytes] | None = None if plain else []
        doc["result"] = response_document(state.response, InferBody(inputs=()), state.client_id or state.job_id, blobs)
    error = state.error(now)
    if error is not None:
        doc["error"] = {"code": error.code.value, "message": error.message}
    return doc


class JobRoutes:
    """The async-job half of the HTTP API."""

    def __init__(self, settings: GatewaySettings, names: Names, store: JobStore, publisher: RequestPublisher) -> None:
        self._settings = settings
        self._names = names
        self._store = store
        self._publisher = publisher
        self._outbox_lease_s = republish_after_s(settings.backend_timeout_s)
        self._sweeper = OutboxSweeper(store, publisher, self._outbox_lease_s)

    @property
    def result_ttl_s(self) -> int:
        """How long a job's result is kept: at least the job TTL (``ReplyAddress.ttl_s``)."""
        return job_result_ttl_s(self._settings)

    def add_to(self, app: web.Application) -> None:
        """Register ``GET``/``DELETE /v2/jobs/{job_id}`` and ``/result``, and run the outbox sweep while the
        app serves (started after the backends, stopped on shutdown before they close)."""
        app.router.add_get(JOBS_PATH + "/{job_id}", self.get_job)
        app.router.add_delete(JOBS_PATH + "/{job_id}", self.cancel_job)
        app.router.add_get(JOBS_PATH + "/{job_id}/result", self.get_result)
        app.on_startup.append(self._start_sweeper)
        app.on_shutdown.append(self._stop_sweeper)

    async def _start_sweeper(self, app: web.Application) -> None:
        await self._sweeper.start()

    async def _stop_sweeper(self, app: web.Application) -> None:
        await self._sweeper.stop()

    async def submit(
        self,
        request: web.Request,
        record: ModelRecord,
        body: InferBody,
        raw: bytes,
        created_ms: float,
        timeout_ms: float,
    ) -> web.Response:
        """Create the job and publish its request; 202 with the job id and ``Location``."""
        key = request.headers.get(IDEMPOTENCY_HEADER)
        owner = _caller(request)
        prefer = wants_async(None, request.headers.get(PREFER_HEADER))
        ttl_s = self._settings.job_ttl_s
        job_id = self._names.new_job_id(key, owner)  # with a key: in its job shard (one hash slot)
        print_ = fingerprint(record.name, request.match_info.get("version"), request.headers.get(HEADER_LENGTH), raw)
        callback = callback_url(
            request.headers.get(CALLBACK_HEADER) or request.query.get(CALLBACK_QUERY), self._settings.webhooks
        )
        fields = {
            F_MODEL: record.name,
            F_VERSION: record.version,
            F_CLIENT_ID: body.id or "",
            F_CREATED: repr(created_ms),
            F_DEADLINE: repr(created_ms + timeout_ms),
            F_EXPIRES: repr(created_ms + ttl_s * 1000.0),
        }
        if callback is not None:
            fields[F_CALLBACK] = callback
        idempotency = None if key is None else (key, f"{job_id} {print_}")
        # A webhook must fire even if no worker ever answers: a gateway expires the job after this.
        expire_at = None if callback is None else created_ms + timeout_ms + self._settings.webhook_expiry_grace_s * 1000
        if not self._publisher.connected:  # nothing could be published: store nothing, so nothing runs
            raise BackendDownError("kafka", await self._publisher.check() or "not connected")
        message = InferenceRequest(
            id=job_id,
            model=record.name,
            version=record.version,
            inputs=body.inputs,
            reply=ReplyAddress(ReplyKind.RESULT, "", ttl_s=self.result_ttl_s),
            outputs=tuple(o.name for o in body.outputs),
            parameters=body.parameters,
            deadline_ms=created_ms + timeout_ms,
            created_ms=created_ms,
        )
        topic = self._names.request_topic(record.name, body.lane or Lane.INTERACTIVE)
        # Stored with its request in the outbox: if this gateway dies before publishing it (or the publish
        # fails or times out), another gateway's sweep publishes it (gateway.jobs.OutboxSweeper).
        republish_at = now_ms() + self._outbox_lease_s * 1000
        existing = await self._store.create(
            job_id,
            fields,
            ttl_s,
            idempotency,
            owner,
            expire_at,
            topic=topic,
            request=message,
            republish_at_ms=republish_at,
        )
        if existing is not None:
            other_id, _, other_print = existing.partition(" ")
            if other_print != print_:
                raise ConflictError(
                    f"{IDEMPOTENCY_HEADER} {key!r} was used for a different request (job {other_id}); "
                    "use a new key for a new request"
                )
            state = await self._store.read(other_id)
            status = JobStatus.PENDING if state is None else state.status(now_ms())
            return _accepted(other_id, status, replayed=True, prefer_applied=prefer)
        try:
            await self._publisher.publish(topic, message)
        except FleetError as exc:
            if not exc.retriable:  # e.g. over the Kafka record limit: it can never be published
                await self._store.forget(job_id, key, owner)
                raise
            # Stored, and maybe even landed (a timed-out publish): the job is accepted and stays in the
            # outbox for a sweep to publish. A 503 would make a client without an Idempotency-Key submit
            # it again, and then it would run twice.
            log.warning("job %s stays in the outbox for a sweep to publish: %s", job_id, exc.message)
            return _accepted(job_id, JobStatus.PENDING, replayed=False, prefer_applied=prefer)
        try:
            await self._store.published(job_id)
        except BackendDownError as exc:  # a sweep publishes it again; the worker keeps only the first result
            log.warning("job %s published but still in the outbox: %s", job_id, exc.message)
        return _accepted(job_id, JobStatus.PENDING, replayed=False, prefer_applied=prefer)

    async def get_job(self, request: web.Request) -> web.Response:
        """``GET /v2/jobs/{id}``: status, timestamps, and the result (done) or error (failed, ...)."""
        job_id = request.match_info["job_id"]
        state = _visible(request, job_id, await self._store.read(_check_job_id(job_id)))
        return json_response(job_document(state, now_ms(), plain=False))

    async def get_result(self, request: web.Request) -> web.Response:
        """``GET /v2/jobs/{id}/result``: the infer response of a done job (``?binary=true``: every output
        as raw bytes in the binary extension), else the job's error as the sync request would have had
        it (504 expired, 409 cancelled, 500 model error, ...), or 409 while it is pending or running."""
        job_id = _check_job_id(request.match_info["job_id"])
        binary = _flag(BINARY_QUERY, request.query.get(BINARY_QUERY))
        state = _visible(request, job_id, await self._store.read(job_id))
        now = now_ms()
        status = state.status(now)
        if status in (JobStatus.PENDING, JobStatus.RUNNING):
            raise ConflictError(f"job {job_id} is {status.value}; its result is not there yet")
        error = state.error(now)
        if error is not None or state.response is None:
            reason = error or ErrorInfo(ErrorCode.INTERNAL, "the job has no stored result")
            raise WorkerReplyError(reason.code, reason.message)
        rendered = render_infer(state.response, InferBody(inputs=(), binary_output=binary), state.client_id or job_id)
        headers = {"Content-Type": rendered.content_type}
        if rendered.header_length is not None:
            headers[HEADER_LENGTH] = str(rendered.header_length)
        return web.Response(body=rendered.body, headers=headers)

    async def cancel_job(self, request: web.Request) -> web.Response:
        """``DELETE /v2/jobs/{id}``: cancel a pending job (200 with the job); 409 once running or finished."""
        job_id = _check_job_id(request.match_info["job_id"])
        state = _visible(request, job_id, await self._store.read(job_id))
        reason = ErrorInfo(ErrorCode.CANCELLED, "cancelled by the client before a worker ran it")
        cancelled = InferenceResponse(job_id, state.model, state.version, error=reason)
        outcome = await self._store.cancel(job_id, cancelled.to_bytes(), self.result_ttl_s, now_ms())
        if outcome == "missing":
            raise JobNotFoundError(job_id)
        state = _visible(request, job_id, await self._store.read(job_id))
        now = now_ms()
        status = state.status(now)
        if outcome == "cancelled" or status is JobStatus.CANCELLED:  # cancelling twice is not an error
            return json_response(job_document(state, now, plain=False))
        raise ConflictError(f"job {job_id} is {status.value}; only a pending job can be cancelled")


def _caller(request: web.Request) -> str:
    """The API key id of the request ("" when auth is off)."""
    key = request.get(API_KEY)
    return "" if key is None else key.key_id


def _visible(request: web.Request, job_id: str, state: JobState | None) -> JobState:
    """``state`` if the caller may see it; a job of a model outside the key's allow-list is "not found"
    (not 403, which would confirm that the id exists)."""
    key = request.get(API_KEY)
    if state is None or (key is not None and not key.allows(state.model)):
        raise JobNotFoundError(job_id)
    return state


def _check_job_id(job_id: str) -> str:
    if not 1 <= len(job_id) <= 128 or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in job_id):
        raise JobNotFoundError(job_id)
    return job_id


def _accepted(job_id: str, status: JobStatus, *, replayed: bool, prefer_applied: bool) -> web.Response:
    headers = {"Location": f"{JOBS_PATH}/{job_id}"}
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    if prefer_applied:
        headers["Preference-Applied"] = RESPOND_ASYNC
    return json_response({"job_id": job_id, "status": status.value}, status=202, headers=headers)
