"""Readiness of the local stack's processes: a probe per kind of process (an async iterator of bools, polled
until True) and :func:`wait_ready`, which fails fast when the process exits first."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from redis.exceptions import RedisError

from autoscaler import state as autoscaler_state
from fleet.client.errors import StackError
from fleet.client.http import FleetClient
from schemas import FleetSettings, Names

from .heartbeats import read_workers
from .procs import ServiceProcess
from .servers import LocalServer

#: A placement verdict this long after the workers were ready comes from a round that saw them.
PLACEMENT_SETTLE_MS = 1000.0
#: Pause between two looks of a probe.
POLL_S = 0.05


async def wait_ready(proc: ServiceProcess, probe: AsyncGenerator[bool, None], timeout_s: float) -> None:
    """Poll ``probe`` until True, failing fast (StackError with the log's tail) if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    async with contextlib.aclosing(probe) as readiness:
        async for ready in readiness:
            if ready and proc.running:  # an answer while ours is dead came from someone else
                return
            if not proc.running:
                raise StackError(
                    f"{proc.name} exited with status {proc.returncode} before it was ready; "
                    f"log {proc.log_path}:\n{proc.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{proc.name} not ready after {timeout_s:.0f}s; log {proc.log_path}:\n{proc.log_tail()}"
                )
            await asyncio.sleep(POLL_S)


async def wait_listening(server: LocalServer, timeout_s: float) -> None:
    """Wait until ``server`` serves (listens; Redis: has loaded its data); StackError (and the server stopped)
    otherwise."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(server.serves):
        if not server.running:
            raise StackError(f"the {server.name} exited with status {server.returncode}; log {server.log_path}")
        if time.monotonic() > deadline:
            await asyncio.to_thread(server.stop)
            raise StackError(f"the {server.name} did not listen on port {server.port}; log {server.log_path}")
        await asyncio.sleep(POLL_S)


async def gateway_ready(url: str) -> AsyncGenerator[bool, None]:
    """The gateway answers ``/v2/health/ready``."""
    async with FleetClient(url, timeout_s=2.0) as client:
        while True:
            yield await client.ready()


async def autoscaler_ready(settings: FleetSettings, since_ms: float) -> AsyncGenerator[bool, None]:
    """The autoscaler published a GPU inventory (it does so right after connecting, before its loop)."""
    client = settings.redis.client()
    try:
        while True:
            reports = []
            with contextlib.suppress(autoscaler_state.StateError):
                reports = await autoscaler_state.read_gpus(client, Names(settings.namespace))
            yield any(r.ts_ms >= since_ms - 1000 for r in reports)
    finally:
        await client.aclose()


async def autoscaled_ready(settings: FleetSettings, models: Sequence[str]) -> AsyncGenerator[bool, None]:
    """Every model has a ready worker (the autoscaler keeps at least ``workers`` of each)."""
    client = settings.redis.client()
    try:
        while True:
            served: set[str] = set()
            with contextlib.suppress(RedisError):
                served = await served_models(client, Names(settings.namespace))
            yield served.issuperset(models)
    finally:
        await client.aclose()


async def placed(settings: FleetSettings, models: Sequence[str], since_ms: float) -> AsyncGenerator[bool, None]:
    """The scheduler decided about every model: placed models have a ready worker serving them; a model it
    could not place (``schedule_failed``, the reason in ``fleet status``) does not hold the stack back, once
    that verdict is from a round that saw the workers (:data:`PLACEMENT_SETTLE_MS` after ``since_ms``, when
    they were ready; an earlier round may have found none)."""
    client = settings.redis.client()
    names = Names(settings.namespace)
    try:
        while True:
            waiting = set(models)
            with contextlib.suppress(RedisError):
                placements = await autoscaler_state.read_placements(client, names, models)
                decided = {
                    m
                    for m, status in placements.items()
                    if status.get("state") in autoscaler_state.UNSERVED_PLACEMENTS
                    and float(status.get("ts_ms") or 0) >= since_ms + PLACEMENT_SETTLE_MS
                }
                waiting = set(models) - await served_models(client, names) - decided
            yield not waiting
    finally:
        await client.aclose()


async def worker_ready(settings: FleetSettings, proc: ServiceProcess) -> AsyncGenerator[bool, None]:
    """The worker's heartbeat hash says ``state=ready`` (and is this process's, not a stale one's)."""
    client = settings.redis.client()
    key = Names(settings.namespace).worker_key(proc.name)
    pid = str(proc.pid).encode()
    try:
        while True:
            fields: dict[bytes, bytes] = {}
            with contextlib.suppress(RedisError):
                fields = await client.hgetall(key)
            # The pid check ignores a stale hash left by an earlier worker with the same id.
            yield fields.get(b"state") == b"ready" and fields.get(b"pid", pid) == pid
    finally:
        await client.aclose()


async def served_models(redis: Any, names: Names) -> set[str]:
    """Models that some worker in state ``ready`` serves now (from the heartbeats); raises RedisError."""
    return {m for view in await read_workers(redis, names) if view.state == "ready" for m in view.models}


def can_listen(host: str, port: int) -> bool:
    """True when a server may listen on ``host:port`` (bound as the gateway binds: with SO_REUSEADDR,
    so a port left in TIME_WAIT counts as free and only a listening socket as busy)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE  # other errors (a bad host) are the gateway's to report
    return True
