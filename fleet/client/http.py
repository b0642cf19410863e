"""Async client of the gateway (Open Inference Protocol v2): HTTP (JSON or binary tensors) or gRPC.

One :class:`FleetClient` holds one ``aiohttp.ClientSession`` (keep-alive connection pool) for its
lifetime; the benchmark drives it at high concurrency, so the request path stays lean: encode, one
POST, decode. :func:`infer_sync` is a one-shot wrapper for scripts.

Async jobs: :meth:`FleetClient.submit` (202 → job id; an ``idempotency_key`` makes a retried submit
return the same job), :meth:`~FleetClient.job` (status document), :meth:`~FleetClient.result`
(outputs once done), :meth:`~FleetClient.wait` (polls with backoff until the job finishes) and
:meth:`~FleetClient.cancel`; ``submit_sync``/``wait_sync``/``cancel_sync`` for scripts.

A ``grpc://host:port`` URL (``grpcs://`` for TLS), or ``grpc=True``, makes the same client speak the gateway's
OIP v2 gRPC service instead (:mod:`.grpc`): same calls and results, same exceptions; async jobs are HTTP only.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from schemas import ErrorCode, JobStatus, SchemaError

from .errors import ClientError, FleetHTTPError, JobFailedError
from .grpc import GrpcTransport, infer_request, is_grpc_url, response_arrays, response_parameters
from .jobs import Job, parse_job
from .wire import HEADER_LENGTH, Array, decode_response, encode_request
from .wire import TIMEOUT_HEADER as TIMEOUT_HEADER  # public: fleet.client.TIMEOUT_HEADER

T = TypeVar("T")

#: Extra seconds the client waits beyond the deadline it gave the gateway.
DEADLINE_GRACE_S = 1.0
#: Request header that makes a resubmitted async job return the job it first created.
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Environment variable with the API key the client sends when none is given (gateways with auth on).
API_KEY_ENV = "FLEET_API_KEY"
#: First and longest pause between two polls of :meth:`FleetClient.wait`.
POLL_MIN_S = 0.01
POLL_MAX_S = 0.5


@dataclass(frozen=True, slots=True)
class InferResult:
    """Outputs of one inference (numpy arrays by name) and what the gateway said about it."""

    model: str
    model_version: str
    id: str
    outputs: dict[str, Array]
    headers: Mapping[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Array:
        return self.outputs[name]


class FleetClient:
    """Client of one gateway: ``async with FleetClient(url) as client: await client.infer(...)``."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        max_connections: int = 64,
        api_key: str | None = None,
        grpc: bool | None = None,
    ) -> None:
        """``api_key``: sent as ``Authorization: Bearer`` on every request (default: env ``FLEET_API_KEY``).
        ``grpc``: speak gRPC to ``base_url`` (``host:port``); None (default): gRPC for a ``grpc://`` URL."""
        self.base_url = base_url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        use_grpc = is_grpc_url(base_url) if grpc is None else grpc
        self._grpc = GrpcTransport(base_url, self._headers) if use_grpc else None
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._infer_timeout = aiohttp.ClientTimeout(total=timeout_s + DEADLINE_GRACE_S)
        self._deadline_header = str(int(timeout_s * 1000))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the connection pool (done on first use as well)."""
        if self._grpc is not None:
            await self._grpc.start()
        elif self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, headers=self._headers)

    async def close(self) -> None:
        """Close the connection pool; idempotent."""
        if self._grpc is not None:
            await self._grpc.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> FleetClient:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Array],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        binary: bool = True,
        timeout_s: float | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        pipeline: bool = False,
    ) -> InferResult:
        """Run ``model`` (its default version unless ``version``) on ``inputs``; FleetHTTPError on non-2xx.

        With ``pipeline``, ``model`` names a pipeline (``POST /v2/pipelines/{p}/infer``, HTTP only).
        Over gRPC, tensors always travel raw (``binary`` does not apply) and ``timeout_s`` is the call's deadline.
        """
        if self._grpc is not None and pipeline:
            raise ClientError("pipelines are served over HTTP only: use an http:// gateway URL")
        if self._grpc is not None:
            return await self._grpc_infer(model, inputs, version, outputs, timeout_s, request_id, parameters)
        body, headers = encode_request(
            inputs, binary=binary, outputs=outputs, request_id=request_id, parameters=parameters
        )
        # The gateway's deadline follows ours; we wait a little longer so its 504 (with a reason) arrives.
        if timeout_s is None:
            headers[TIMEOUT_HEADER], http_timeout = self._deadline_header, self._infer_timeout
        else:
            headers[TIMEOUT_HEADER] = str(int(timeout_s * 1000))
            http_timeout = aiohttp.ClientTimeout(total=timeout_s + DEADLINE_GRACE_S)
        path = _infer_path(model, version, pipeline)
        _, reply_headers, raw = await self._request("POST", path, body, headers, http_timeout)
        length = reply_headers.get(HEADER_LENGTH)
        meta, arrays = decode_response(raw, int(length) if length is not None else None)
        return InferResult(
            model=str(meta.get("model_name", model)),
            model_version=str(meta.get("model_version", version or "")),
            id=str(meta.get("id", "")),
            outputs=arrays,
            headers=reply_headers,
            parameters=dict(meta.get("parameters") or {}),
        )

    async def _grpc_infer(
        self,
        model: str,
        inputs: Mapping[str, Array],
        version: str | None,
        outputs: Sequence[str] | None,
        timeout_s: float | None,
        request_id: str | None,
        parameters: Mapping[str, Any] | None,
    ) -> InferResult:
        assert self._grpc is not None
        request = infer_request(
            model, inputs, version=version, outputs=outputs, request_id=request_id, parameters=parameters
        )
        answer = await self._grpc.infer(request, self.timeout_s if timeout_s is None else timeout_s)
        try:
            arrays = response_arrays(answer)
        except SchemaError as exc:
            raise ClientError(f"ModelInfer of {model}: {exc.message}") from exc
        return InferResult(
            model=answer.model_name or model,
            model_version=answer.model_version or version or "",
            id=answer.id,
            outputs=arrays,
            parameters=response_parameters(answer),
        )

    # async jobs ----------------------------------------------------------------------------------
    async def submit(
        self,
        model: str,
        inputs: Mapping[str, Array],
        *,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        deadline_s: float | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        pipeline: bool = False,
    ) -> str:
        """Submit an async job and return its id at once (the gateway answers 202).

        With ``pipeline``, ``model`` names a pipeline (``POST /v2/pipelines/{p}/infer?async=true``).

        ``idempotency_key``: a resubmit with the same key (and the same request) returns the same job
        and never runs it twice; the same key with another request is FleetHTTPError 409 CONFLICT.
        ``deadline_s``: the job expires unless a worker takes it within this time (default: the
        gateway's job TTL). Inputs are always sent as binary tensors; results come back as JSON.
        """
        # Binary inputs; a job's result is always rendered as JSON (binary output flags do not apply).
        body, headers = encode_request(
            inputs, binary=True, outputs=outputs, request_id=request_id, parameters=parameters
        )
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        if deadline_s is not None:
            headers[TIMEOUT_HEADER] = str(int(deadline_s * 1000))
        path = _infer_path(model, version, pipeline)
        _, _, raw = await self._request("POST", path + "?async=true", body, headers, None)
        accepted = _json_object(raw, f"POST {path}")
        job_id = accepted.get("job_id")
        if not isinstance(job_id, str):
            raise ClientError(f"POST {path}: the gateway's 202 carries no job id")
        return job_id

    async def job(self, job_id: str) -> Job:
        """The job's status document (FleetHTTPError 404 JOB_NOT_FOUND when unknown or past its TTL)."""
        _, _, raw = await self._request("GET", f"/v2/jobs/{job_id}", None, {}, None)
        try:
            return parse_job(_json_object(raw, f"GET /v2/jobs/{job_id}"))
        except SchemaError as exc:
            raise ClientError(f"GET /v2/jobs/{job_id}: {exc.message}") from exc

    async def result(self, job_id: str) -> InferResult | None:
        """The job's outputs when done, None while pending or running; JobFailedError when it cannot finish."""
        return _result_of(await self.job(job_id))

    async def wait(self, job_id: str, timeout_s: float | None = None) -> InferResult:
        """Poll (with backoff) until the job finishes; its outputs, or JobFailedError.

        ClientError(DEADLINE_EXCEEDED) when it has not finished within ``timeout_s`` (default: the
        client's ``timeout_s``); the job itself goes on.
        """
        loop = asyncio.get_running_loop()
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + limit
        pause = POLL_MIN_S
        while True:
            result = await self.result(job_id)
            if result is not None:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ClientError(f"job {job_id} not finished within {limit:g} s", code=ErrorCode.DEADLINE_EXCEEDED)
            await asyncio.sleep(min(pause, remaining))
            pause = min(POLL_MAX_S, pause * 2)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a pending job (its document, status cancelled); FleetHTTPError 409 once it runs or finished."""
        _, _, raw = await self._request("DELETE", f"/v2/jobs/{job_id}", None, {}, None)
        try:
            return parse_job(_json_object(raw, f"DELETE /v2/jobs/{job_id}"))
        except SchemaError as exc:
            raise ClientError(f"DELETE /v2/jobs/{job_id}: {exc.message}") from exc

    async def ready(self) -> bool:
        """True when the gateway answers ``/v2/health/ready`` with 200; False when it is down or not ready."""
        if self._grpc is not None:
            return await self._grpc.ready()
        try:
            status, _, _ = await self._request("GET", "/v2/health/ready", None, {}, None, check=False)
        except ClientError:
            return False
        return status == 200

    async def server_metadata(self) -> dict[str, Any]:
        """``GET /v2``: server name, version and extensions."""
        if self._grpc is not None:
            return await self._grpc.server_metadata(self.timeout_s)
        return await self._get_json("/v2")

    async def model_metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{model}[/versions/{version}]``: platform, versions, inputs and outputs."""
        if self._grpc is not None:
            return await self._grpc.model_metadata(model, version, self.timeout_s)
        return await self._get_json(_model_path(model, version))

    async def model_ready(self, model: str, version: str | None = None) -> bool:
        """Whether a live worker serves the model (version) now (``GET .../ready``); FleetHTTPError 404 for an
        unknown model over HTTP (gRPC's ModelReady answers False for it, as Triton does)."""
        if self._grpc is not None:
            return await self._grpc.model_ready(model, version, self.timeout_s)
        status, _, raw = await self._request("GET", _model_path(model, version) + "/ready", None, {}, None, check=False)
        if status == 200:
            return True
        if status == 503 and _json_object(raw, "GET .../ready").get("ready") is False:
            return False
        message, code = _error_body(raw, status)
        raise FleetHTTPError(status, message, code=code)

    async def _get_json(self, path: str) -> dict[str, Any]:
        _, _, raw = await self._request("GET", path, None, {}, None)
        return _json_object(raw, f"GET {path}")

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        limit: aiohttp.ClientTimeout | None,
        *,
        check: bool = True,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One HTTP exchange; transport failures become ClientError, non-2xx FleetHTTPError."""
        if self._grpc is not None:
            raise ClientError(f"{method} {path} has no gRPC equivalent (async jobs are HTTP only): use the HTTP URL")
        if self._session is None:
            await self.start()
        assert self._session is not None
        url = self.base_url + path
        timeout = limit or self._timeout
        try:
            async with self._session.request(method, url, data=body, headers=headers, timeout=timeout) as resp:
                raw = await resp.read()
                status, reply_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise ClientError(
                f"{method} {url}: no answer within the timeout", code=ErrorCode.DEADLINE_EXCEEDED
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ClientError(f"cannot reach the gateway at {self.base_url}: {exc or type(exc).__name__}") from exc
        if check and not 200 <= status < 300:
            message, code = _error_body(raw, status)
            raise FleetHTTPError(status, message, code=code)
        return status, reply_headers, raw


def _infer_path(model: str, version: str | None, pipeline: bool) -> str:
    if pipeline:
        return f"/v2/pipelines/{model}/infer"
    return f"{_model_path(model, version)}/infer"


def _model_path(model: str, version: str | None) -> str:
    return f"/v2/models/{model}/versions/{version}" if version else f"/v2/models/{model}"


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ClientError(f"{what}: the gateway answered something that is not JSON") from exc
    if not isinstance(value, dict):
        raise ClientError(f"{what}: expected a JSON object")
    return value


def _result_of(job: Job) -> InferResult | None:
    if job.status is JobStatus.DONE:
        meta = job.result or {}
        return InferResult(
            model=str(meta.get("model_name", job.model)),
            model_version=str(meta.get("model_version", job.version)),
            id=str(meta.get("id", job.id)),
            outputs=dict(job.outputs or {}),
            parameters=dict(meta.get("parameters") or {}),
        )
    if job.finished:
        raise JobFailedError(job.id, job.status.value, job.error or "no outputs", code=job.error_code)
    return None


def _error_body(raw: bytes, status: int) -> tuple[str, ErrorCode | None]:
    """The ``error`` text of an error body ``{"error": ..., "code": ...}`` (or the raw text) and its code."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:500] or f"status {status}", None
    if not isinstance(value, dict) or "error" not in value:
        return str(value)[:500], None
    code = value.get("code")
    return str(value["error"]), ErrorCode(code) if isinstance(code, str) and code in ErrorCode.__members__ else None


def infer_sync(base_url: str, model: str, inputs: Mapping[str, Array], **kwargs: Any) -> InferResult:
    """One blocking inference for scripts (opens and closes its own connection); not for a running loop."""

    async def once() -> InferResult:
        async with FleetClient(base_url) as client:
            return await client.infer(model, inputs, **kwargs)

    return asyncio.run(once())


def _run(base_url: str, call: Callable[[FleetClient], Awaitable[T]]) -> T:
    async def once() -> T:
        async with FleetClient(base_url) as client:
            return await call(client)

    return asyncio.run(once())


def submit_sync(base_url: str, model: str, inputs: Mapping[str, Array], **kwargs: Any) -> str:
    """Submit one async job from a script (see :meth:`FleetClient.submit`); returns its id."""
    return _run(base_url, lambda c: c.submit(model, inputs, **kwargs))


def job_sync(base_url: str, job_id: str) -> Job:
    """The status document of a job, from a script."""
    return _run(base_url, lambda c: c.job(job_id))


def wait_sync(base_url: str, job_id: str, timeout_s: float | None = None) -> InferResult:
    """Block until the job finishes (see :meth:`FleetClient.wait`)."""
    return _run(base_url, lambda c: c.wait(job_id, timeout_s))


def cancel_sync(base_url: str, job_id: str) -> Job:
    """Cancel a pending job from a script."""
    return _run(base_url, lambda c: c.cancel(job_id))
