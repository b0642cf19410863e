"""``python -m gateway``: run one gateway process until SIGTERM or SIGINT, then stop gracefully.

Settings come from the environment (``FLEET_GATEWAY_*``, ``FLEET_NAMESPACE``, ``FLEET_KAFKA_*``,
``FLEET_REDIS_*``); ``FLEET_LOG_LEVEL`` sets the log level (default INFO), ``FLEET_LOG_FORMAT`` the
log format (``text``, the default, or ``json``: one object per line with the request id).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys

from common import tracing
from schemas import SettingsError, eventloop

from .app import Gateway
from .logs import configure_from_env
from .settings import GatewaySettings

log = logging.getLogger("fleet.gateway")


def settle_garbage_collector(young_threshold: int) -> None:
    """Once the gateway has started: move every object made so far (modules, classes, the app, its routes) out of
    the collector's reach (``gc.freeze``), so that a full collection no longer walks them (40-100 ms each, every
    few seconds under load), and collect the youngest generation only past ``young_threshold`` (0: Python's
    default). Process-wide, so only this entry point does it, not the Gateway class."""
    gc.collect()
    gc.freeze()
    if young_threshold:
        gc.set_threshold(young_threshold, *gc.get_threshold()[1:])


async def serve(settings: GatewaySettings) -> None:
    """Run a gateway until SIGTERM/SIGINT (only this entry point installs signal handlers)."""
    stopping = asyncio.Event()
    with eventloop.stop_signals(stopping.set):
        async with Gateway(settings):
            settle_garbage_collector(settings.gc_young_threshold)
            await stopping.wait()
            log.info("signal received, stopping")


def main() -> int:
    """Entry point; returns the process exit code."""
    try:
        configure_from_env(os.environ)
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    try:
        settings = GatewaySettings.from_env(os.environ)
    except (SettingsError, ValueError) as exc:
        log.error("invalid settings", extra={"error": str(exc)})
        return 2
    with tracing.configured(settings.fleet.tracing, "fleet-gateway"):  # before the gateway registers its routes
        eventloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
