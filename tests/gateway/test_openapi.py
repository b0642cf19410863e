"""The served OpenAPI document: valid 3.1 structure, and exactly the routes the gateway registers."""

from __future__ import annotations

import aiohttp

from gateway import Gateway
from gateway.openapi import OPENAPI_PATH
from schemas import ErrorCode


async def test_document_lists_exactly_the_registered_routes(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + OPENAPI_PATH) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        spec = await resp.json()
    assert spec["openapi"].startswith("3.1") and spec["info"]["version"]
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    runner = gateway._runner
    assert runner is not None
    registered = {
        (route.method, route.resource.canonical)
        for route in runner.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == registered
    # every $ref resolves, every error code is documented
    text = str(spec)
    for ref in {part.split("'")[0] for part in text.split("'$ref': '")[1:]}:
        section, kind, name = ref.removeprefix("#/").split("/")
        assert name in spec[section][kind], ref
    assert set(spec["components"]["schemas"]["Error"]["properties"]["code"]["enum"]) == {c.value for c in ErrorCode}
    assert {"bearer", "apiKey"} <= set(spec["components"]["securitySchemes"])
