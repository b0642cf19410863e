"""The heartbeat against the real Redis: the worker index drops dead workers and the ones that stop."""

from __future__ import annotations

from typing import Any

from schemas import Names, now_ms
from workers.heartbeat import Heartbeat


async def test_beats_prune_dead_workers_and_a_clean_stop_leaves_the_index(redis_client: Any, names: Names) -> None:
    now = int(now_ms())
    await redis_client.zadd(names.workers_key, {"dead": now - 3_600_000, "recent": now - 1000})
    heartbeat = Heartbeat(redis_client, names, "w1", ["m"], 0.5, lambda: [], lambda: "cpu")
    await heartbeat.start()
    try:
        members = {m.decode() for m in await redis_client.zrange(names.workers_key, 0, -1)}
        assert members == {"w1", "recent"}  # an hour-old entry is gone, a recent one (another worker) stays
    finally:
        await heartbeat.stop()
    assert await redis_client.zscore(names.workers_key, "w1") is None
    assert await redis_client.hget(names.worker_key("w1"), "state") == b"stopped"  # the hash expires on its own
    assert await redis_client.zscore(names.workers_key, "recent") is not None
