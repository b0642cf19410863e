"""``POST /v2/repository/index``: the model repository index of the KServe/Triton repository extension.

Clients and tools built for Triton list models with it (``tritonclient``'s ``get_model_repository_index``).
Here every registered version is ``READY``: the registry is the repository, and a request for any
registered version is queued for the workers (which load it on demand). A caller whose API key has a
model allow-list sees only those models. ``load``/``unload`` of that extension are not offered: models
enter with ``fleet models register`` and leave with ``fleet models remove``, and workers follow.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from schemas import ModelRegistry
from schemas.apikeys import ApiKey

from .auth import API_KEY
from .errors import InvalidRequestError, redis_bounded

INDEX_PATH = "/v2/repository/index"
READY = "READY"
_MAX_BODY_BYTES = 4096


def parse_index_body(raw: bytes) -> bool:
    """``ready`` of the request body (``{}``, ``{"ready": true}`` or empty); InvalidRequestError otherwise."""
    if not raw.strip():
        return False
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("the repository index body must be a JSON object") from None
    if not isinstance(body, dict) or not set(body) <= {"ready"}:
        raise InvalidRequestError('the repository index body may only hold "ready" (true or false)')
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidRequestError('"ready" must be true or false')
    return ready


class RepositoryRoutes:
    """The index route; every lookup bounded by ``timeout_s`` (503 past it)."""

    def __init__(self, registry: ModelRegistry, timeout_s: float) -> None:
        self._registry = registry
        self._timeout_s = timeout_s

    def add_to(self, app: web.Application) -> None:
        """Register ``POST /v2/repository/index``."""
        app.router.add_post(INDEX_PATH, self.index)

    async def index(self, request: web.Request) -> web.Response:
        """Every registered model version the caller may use, ``{"name", "version", "state"}``, by name."""
        if request.content_length is not None and request.content_length > _MAX_BODY_BYTES:
            raise InvalidRequestError(f"the repository index body is limited to {_MAX_BODY_BYTES} bytes")
        parse_index_body(await request.content.read(_MAX_BODY_BYTES + 1))  # every entry is ready either way
        key = request.get(API_KEY)
        models, versions = await redis_bounded(self._listing(key), self._timeout_s, "registry listing")
        entries: list[dict[str, Any]] = [
            {"name": model, "version": version, "state": READY}
            for model, model_versions in zip(models, versions, strict=True)
            for version in model_versions
        ]
        return web.json_response(entries)

    async def _listing(self, key: ApiKey | None) -> tuple[list[str], list[list[str]]]:
        """The models ``key`` may use and the versions of each."""
        models = [m for m in await self._registry.models() if key is None or key.allows(m)]
        return models, list(await asyncio.gather(*(self._registry.versions(m) for m in models)))
