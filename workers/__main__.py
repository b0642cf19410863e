"""``python -m workers``: settings from the environment, signal handling, drain, exit status.

Exit status: 0 after a graceful drain, 1 when the worker failed, 2 for bad settings.
"""

from __future__ import annotations

import logging
import os
import sys

from common import tracing
from schemas import FleetError, SettingsError, eventloop
from schemas.logs import configure_from_env

from .settings import WorkerSettings
from .worker import Worker

log = logging.getLogger("fleet.workers")


async def serve(settings: WorkerSettings) -> int:
    """Run a worker until SIGTERM/SIGINT, then drain; returns the exit status."""
    worker = Worker(settings)
    with eventloop.stop_signals(worker.request_stop):
        try:
            await worker.start()
            await worker.run_until_stopped()
        except FleetError as exc:
            log.error("worker failed: %s", exc.message)
            return 1
    return 0


def main() -> int:
    """Entry point of ``python -m workers``."""
    try:
        configure_from_env(os.environ)
        settings = WorkerSettings.from_env(os.environ)
    except SettingsError as exc:
        print(f"workers: {exc}", file=sys.stderr)
        return 2
    with tracing.configured(settings.fleet.tracing, "fleet-worker"):
        return eventloop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
