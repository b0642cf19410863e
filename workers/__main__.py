"""``python -m workers``: settings from the environment, signal handling, drain, exit status.

``python -m workers --standby`` is a warm standby (the local pool runner keeps one ahead): it reads its
settings, imports everything and starts its event loop, then waits, not yet a member of the fleet (no
heartbeat, no Kafka client, nothing placed on it), for a line on its standard input; that line activates it
and it starts as a worker would. SIGTERM/SIGINT or the end of its standard input (the parent died or closed
it) before that line ends it with status 0.

Exit status: 0 after a graceful drain (or a standby ended before its activation), 1 when the worker failed,
2 for bad settings (or a standby whose stdin is not a pipe).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import stat
import sys
from typing import IO

from common import tracing
from schemas import FleetError, SettingsError, eventloop
from schemas.logs import configure_from_env

from .settings import WorkerSettings
from .worker import Worker

log = logging.getLogger("fleet.workers")


async def wait_for_activation(stream: IO[bytes] | IO[str]) -> bool:
    """Wait for a line on ``stream`` (a pipe) without blocking the loop: True when it came, False on SIGTERM,
    SIGINT or end of input first; ValueError or OSError when ``stream`` is no pipe."""
    mode = os.fstat(stream.fileno()).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        raise ValueError("not a pipe or a socket")  # uvloop aborts the process on a file or a device
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
    stop = asyncio.Event()
    try:
        with eventloop.stop_signals(stop.set):
            line = asyncio.ensure_future(reader.readline())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({line, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (line, stopped):
                    task.cancel()
                await asyncio.gather(line, stopped, return_exceptions=True)
        if stop.is_set() or line.cancelled() or line.exception() is not None:
            return False
        return line.result().endswith(b"\n")  # a partial line is the end of input
    finally:
        transport.close()


async def serve(settings: WorkerSettings, *, standby: bool = False) -> int:
    """Run a worker until SIGTERM/SIGINT, then drain; returns the exit status.

    ``standby``: first wait for the activation line on standard input (`wait_for_activation`); 0 without it.
    """
    if standby:
        log.info("worker %s: standing by", settings.worker_id)
        try:
            activated = await wait_for_activation(sys.stdin)
        except (OSError, ValueError) as exc:  # not a pipe (a regular file, a closed descriptor)
            log.error("worker %s: --standby needs a pipe on stdin: %s", settings.worker_id, exc)
            return 2
        if not activated:
            log.info("worker %s: stood down before its activation", settings.worker_id)
            return 0
        log.info("worker %s: activated", settings.worker_id)
        with contextlib.suppress(OSError):
            sys.stdin.close()  # nothing more is read from it
    worker = Worker(settings, process_title=True)  # this process is the worker: `ps` shows what it serves
    with eventloop.stop_signals(worker.request_stop):
        try:
            await worker.start()
            await worker.run_until_stopped()
        except FleetError as exc:
            log.error("worker failed: %s", exc.message)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m workers [--standby]``."""
    parser = argparse.ArgumentParser(prog="python -m workers", description="A fleet worker (settings: FLEET_*).")
    parser.add_argument(
        "--standby", action="store_true", help="start warm, then wait for a line on stdin before joining the fleet"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        configure_from_env(os.environ)
        settings = WorkerSettings.from_env(os.environ)
    except SettingsError as exc:
        print(f"workers: {exc}", file=sys.stderr)
        return 2
    with tracing.configured(settings.fleet.tracing, "fleet-worker"):
        return eventloop.run(serve(settings, standby=args.standby))


if __name__ == "__main__":
    sys.exit(main())
