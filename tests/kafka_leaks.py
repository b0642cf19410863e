"""Kafka clients a test module left running: found by their aiokafka routines on the session's event loop.

No session-scoped fixture holds a Kafka client, so an aiokafka routine still running once a module's fixtures are
torn down belongs to a client that module never closed. Left alone it outlives its broker (a module's own broker,
stopped at its end) and reconnects forever: "Unable connect to node with id ..." in every later test's captured
logs, and CPU. ``tests/conftest.py`` closes such clients at each module's end and names the module in the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Any

_AIOKAFKA_DIR = f"{os.sep}aiokafka{os.sep}"


def aiokafka_tasks() -> list[asyncio.Task[Any]]:
    """The pending tasks of aiokafka's own routines on the running loop (a client's metadata sync, a producer's
    sender, a consumer's fetcher and group coordination)."""
    return [task for task in asyncio.all_tasks() if not task.done() and _is_aiokafka(task)]


def _is_aiokafka(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and _AIOKAFKA_DIR in code.co_filename


def _client_of(task: asyncio.Task[Any]) -> Any:
    """The AIOKafkaClient a routine serves (the routine's object, or that object's client)."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    owner = frame.f_locals.get("self") if frame is not None else None
    if owner is None or hasattr(owner, "_md_synchronizer"):
        return owner
    return getattr(owner, "_client", None) or getattr(owner, "client", None)


async def close_leaked(tasks: Sequence[asyncio.Task[Any]]) -> list[str]:
    """Cancel ``tasks`` and close the clients they serve; returns, per client, its bootstrap servers and the
    routines that were left running (``127.0.0.1:9092 (Sender._sender_routine)``)."""
    routines: dict[int, tuple[Any, list[str]]] = {}
    for task in tasks:
        client = _client_of(task)
        routines.setdefault(id(client), (client, []))[1].append(getattr(task.get_coro(), "__qualname__", "?"))
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client, _ in routines.values():
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
    return sorted(
        f"{getattr(client, '_bootstrap_servers', '?')} ({', '.join(sorted(names))})"
        for client, names in routines.values()
        if client is not None  # a connection's reader: closed with its client
    )
