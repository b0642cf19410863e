"""Async HTTP client of the gateway (Open Inference Protocol v2, JSON or binary tensors).

One :class:`FleetClient` holds one ``aiohttp.ClientSession`` (keep-alive connection pool) for its
lifetime; the benchmark drives it at high concurrency, so the request path stays lean: encode, one
POST, decode. :func:`infer_sync` is a one-shot wrapper for scripts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

from schemas import ErrorCode

from .errors import ClientError, FleetHTTPError
from .wire import HEADER_LENGTH, Array, decode_response, encode_request

#: Request header that tells the gateway our timeout (its deadline for the workers).
TIMEOUT_HEADER = "X-Fleet-Timeout-Ms"
#: Extra seconds the client waits beyond the deadline it gave the gateway.
DEADLINE_GRACE_S = 1.0


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

    def __init__(self, base_url: str, *, timeout_s: float = 30.0, max_connections: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._infer_timeout = aiohttp.ClientTimeout(total=timeout_s + DEADLINE_GRACE_S)
        self._deadline_header = str(int(timeout_s * 1000))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the connection pool (done on first use as well)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def close(self) -> None:
        """Close the connection pool; idempotent."""
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
    ) -> InferResult:
        """Run ``model`` (its default version unless ``version``) on ``inputs``; FleetHTTPError on non-2xx."""
        body, headers = encode_request(
            inputs, binary=binary, outputs=outputs, request_id=request_id, parameters=parameters
        )
        # The gateway's deadline follows ours; we wait a little longer so its 504 (with a reason) arrives.
        if timeout_s is None:
            headers[TIMEOUT_HEADER], http_timeout = self._deadline_header, self._infer_timeout
        else:
            headers[TIMEOUT_HEADER] = str(int(timeout_s * 1000))
            http_timeout = aiohttp.ClientTimeout(total=timeout_s + DEADLINE_GRACE_S)
        path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
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

    async def ready(self) -> bool:
        """True when the gateway answers ``/v2/health/ready`` with 200; False when it is down or not ready."""
        try:
            status, _, _ = await self._request("GET", "/v2/health/ready", None, {}, None, check=False)
        except ClientError:
            return False
        return status == 200

    async def server_metadata(self) -> dict[str, Any]:
        """``GET /v2``: server name, version and extensions."""
        return await self._get_json("/v2")

    async def model_metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{model}[/versions/{version}]``: platform, versions, inputs and outputs."""
        return await self._get_json(f"/v2/models/{model}/versions/{version}" if version else f"/v2/models/{model}")

    async def _get_json(self, path: str) -> dict[str, Any]:
        _, _, raw = await self._request("GET", path, None, {}, None)
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise ClientError(f"GET {path}: the gateway answered something that is not JSON") from exc
        if not isinstance(value, dict):
            raise ClientError(f"GET {path}: expected a JSON object")
        return value

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
