"""``python -m autoscaler``: settings from the environment, logging, signal handling, graceful stop.

Exit status: 0 after a graceful stop, 1 when the autoscaler failed, 2 for bad settings.
``FLEET_WORKER_*`` variables (other than the model list and the id), ``FLEET_LOG_LEVEL`` and
``FLEET_LOG_FORMAT`` are handed on to the workers the local backend spawns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping

from schemas import FleetError, SettingsError, eventloop
from schemas.logs import LOG_FORMAT_ENV, LOG_LEVEL_ENV, configure_from_env

from .errors import AutoscalerError
from .service import run
from .settings import AutoscalerSettings

log = logging.getLogger("fleet.autoscaler")

#: Set by the backend for each worker; never inherited.
_PER_WORKER = ("FLEET_WORKER_MODELS", "FLEET_WORKER_ID")


def inherited_worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that local workers get from the autoscaler (pure)."""
    keep = {k: v for k, v in env.items() if k.startswith("FLEET_WORKER_") and k not in _PER_WORKER}
    for name in (LOG_LEVEL_ENV, LOG_FORMAT_ENV):
        if name in env:
            keep[name] = env[name]
    return keep


async def serve(settings: AutoscalerSettings, worker_env: Mapping[str, str]) -> int:
    """Run until SIGTERM/SIGINT, then stop gracefully; returns the exit status."""
    stop = asyncio.Event()
    with eventloop.stop_signals(stop.set):
        try:
            await run(settings, stop, worker_env=worker_env)
        except (AutoscalerError, FleetError) as exc:
            log.error("autoscaler failed: %s", exc)
            return 1
    return 0


def main() -> int:
    """Entry point of ``python -m autoscaler``."""
    try:
        configure_from_env(os.environ)
        settings = AutoscalerSettings.from_env(os.environ)
    except SettingsError as exc:
        print(f"autoscaler: {exc}", file=sys.stderr)
        return 2
    return eventloop.run(serve(settings, inherited_worker_env(os.environ)))


if __name__ == "__main__":
    sys.exit(main())
