"""Route order: the infer routes come first among the ``/v2/models/...`` routes, which aiohttp tries in order."""

from __future__ import annotations

import aiohttp

from gateway import Gateway


async def test_infer_routes_are_tried_first_and_other_methods_still_get_405(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    runner = gateway._runner
    assert runner is not None
    under_models = [r.canonical for r in runner.app.router.resources() if r.canonical.startswith("/v2/models/")]
    assert under_models[:2] == ["/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"]
    assert "/v2/models/{model}/ready" in under_models and "/v2/models/{model}/generate" in under_models
    async with http.get(gateway.url + "/v2/models/anything/infer") as resp:
        assert resp.status == 405
