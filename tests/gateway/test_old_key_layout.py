"""A gateway that starts against a Redis holding only the previous key layout says which command migrates it."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from schemas import Names


@pytest.mark.parametrize("new_registry", [False, True])
async def test_start_warns_once_about_old_layout_keys(
    gateway_settings: GatewaySettings,
    names: Names,
    redis_client: Any,
    caplog: pytest.LogCaptureFixture,
    new_registry: bool,
) -> None:
    await redis_client.sadd(f"{names.namespace}:models", "tiny")  # the previous layout's registry
    if new_registry:
        await redis_client.sadd(names.models_key, "tiny")
    caplog.set_level(logging.WARNING, logger="fleet.gateway")
    async with Gateway(gateway_settings, names=names):
        pass
    warnings = [r.getMessage() for r in caplog.records if "previous key layout" in r.getMessage()]
    assert warnings == ([] if new_registry else [warnings[0]])
    assert new_registry or "`fleet admin migrate-keys`" in warnings[0]
