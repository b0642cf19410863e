"""A pool worker cut off from Redis (its own connections frozen by a proxy; Kafka still reachable) is fenced:
it fetches nothing once its liveness may lapse, another worker takes its partitions over after the lease TTL,
and every request is taken into a round exactly once; back in touch, it lets go of what was taken over and
claims partitions again (real broker and Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from schemas import FleetSettings, Names
from workers import Worker

from .conftest import make_request
from .test_pool import _assign, _register, _Replies, _send, _settings, _wait_owners

pytestmark = pytest.mark.integration

INTERVAL_S = 0.3  # liveness TTL 0.9 s, fenced after 0.6 s without a write


class FreezingProxy:
    """A TCP proxy to Redis whose traffic can be frozen (held, both ways) and thawed."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._url = parts
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen; returns the URL to give the clients."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return self._url._replace(netloc=f"127.0.0.1:{port}").geturl()

    def freeze(self) -> None:
        self._open.clear()

    def thaw(self) -> None:
        self._open.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


async def _until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_worker_cut_off_from_redis_stops_consuming_and_another_takes_over_exactly_once(
    fleet_settings: FleetSettings, names: Names, redis_client: Any, tmp_path: Path, producer: AIOKafkaProducer
) -> None:
    await _register(fleet_settings, names, redis_client, tmp_path, ["m"])
    await _assign(redis_client, names, {"pa": ["m"], "pb": []})
    proxy = FreezingProxy(fleet_settings.redis.url)
    cut_off = dataclasses.replace(
        fleet_settings, redis=dataclasses.replace(fleet_settings.redis, url=await proxy.start())
    )
    stream = names.reply_stream("pool")
    x = np.ones((1, 16), np.float32)
    sent: list[str] = []

    async def send(prefix: str, count: int) -> None:
        batch = [make_request(stream, x, model="m", rid=f"{prefix}-{i}") for i in range(count)]
        await _send(producer, names.request_topic("m"), batch)
        sent.extend(r.id for r in batch)

    replies = _Replies(redis_client, stream)
    a_settings, b_settings = (
        dataclasses.replace(_settings(fleet, tmp_path, w, follow_assignment=True), heartbeat_interval_s=INTERVAL_S)
        for fleet, w in ((cut_off, "pa"), (fleet_settings, "pb"))
    )
    try:
        async with Worker(a_settings) as a, Worker(b_settings) as b:
            await a.wait_ready(30)
            await b.wait_ready(30)
            assert a.pool is not None and b.pool is not None
            await _wait_owners(redis_client, names, "m", {"pa"})
            await send("warm", 3)
            await replies.until(lambda r: len(r.ids()) >= 3)
            proxy.freeze()  # pa reaches neither its liveness key nor the new assignment
            await _assign(redis_client, names, {"pa": [], "pb": ["m"]})
            await _until(lambda: a.pool.fenced, 10, "pa is not fenced")
            await send("cut", 30)  # fetched by nobody until pb owns the partitions (pa's liveness lapsed)
            await replies.until(lambda r: len(r.ids()) >= len(sent), timeout_s=30)
            await _wait_owners(redis_client, names, "m", {"pb"})
            proxy.thaw()
            await _until(lambda: not a.pool.fenced, 20, "pa is still fenced after Redis came back")
            # back in touch, pa is a replica again: it claims its half once pb lets go of it
            await _assign(redis_client, names, {"pa": ["m"], "pb": ["m"]})
            await _wait_owners(redis_client, names, "m", {"pa", "pb"})
            await send("back", 30)
            await replies.until(lambda r: len(r.ids()) >= len(sent), timeout_s=30)
            labels = {"model": "m", "lane": "interactive"}
            taken = {
                w.id: w.metrics.registry.get_sample_value("fleet_worker_lane_requests_total", labels) or 0
                for w in (a, b)
            }
    finally:
        await proxy.close()
    # every request was taken into a round exactly once over both workers, and answered once
    assert sum(taken.values()) == len(sent), taken
    counts = Counter(r.id for r in replies.entries)
    assert set(counts) == set(sent) and max(counts.values()) == 1
    assert all(r.error is None for r in replies.entries)
    by_worker = {r.id: r.worker for r in replies.entries}
    assert {by_worker[rid] for rid in sent if rid.startswith("cut-")} == {"pb"}
    assert {by_worker[rid] for rid in sent if rid.startswith("back-")} == {"pa", "pb"}
