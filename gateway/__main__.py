"""``python -m gateway``: run one gateway process until SIGTERM or SIGINT, then stop gracefully.

Settings come from the environment (``FLEET_GATEWAY_*``, ``FLEET_NAMESPACE``, ``FLEET_KAFKA_*``,
``FLEET_REDIS_*``); ``FLEET_LOG_LEVEL`` sets the log level (default INFO), ``FLEET_LOG_FORMAT`` the
log format (``text``, the default, or ``json``: one object per line with the request id).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from common import tracing
from schemas import SettingsError, eventloop

from .app import Gateway
from .logs import configure_from_env
from .settings import GatewaySettings

log = logging.getLogger("fleet.gateway")


async def serve(settings: GatewaySettings) -> None:
    """Run a gateway until SIGTERM/SIGINT (only this entry point installs signal handlers)."""
    stopping = asyncio.Event()
    with eventloop.stop_signals(stopping.set):
        async with Gateway(settings):
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
