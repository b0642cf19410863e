"""A heartbeat writes only the fields that changed (a pool worker's models and partitions run to thousands of
entries), and all of them again when its hash is gone (real Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import Names
from workers.heartbeat import Heartbeat

pytestmark = pytest.mark.integration


async def test_a_beat_writes_the_changed_fields_and_everything_when_the_hash_is_gone(
    redis_client: Any, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every beat in one millisecond, as back-to-back beats (a state change right after a periodic beat) can be.
    monkeypatch.setattr("workers.heartbeat.now_ms", lambda: 1_700_000_000_000)
    partitions = ["t:0", "t:1"]
    heartbeat = Heartbeat(redis_client, names, "w1", ["m"], 3600.0, lambda: partitions, lambda: "cpu")
    key = names.worker_key("w1")
    assert await heartbeat.beat()
    first = await redis_client.hgetall(key)
    assert first[b"partitions"] == b"t:0,t:1" and first[b"models"] == b"m" and first[b"state"] == b"starting"
    await redis_client.hset(key, "device", "stand-in")  # not what the worker says: shows what a beat re-sends
    partitions.append("t:2")
    assert await heartbeat.beat()
    second = await redis_client.hgetall(key)
    assert second[b"partitions"] == b"t:0,t:1,t:2"  # changed: written
    assert second[b"device"] == b"stand-in"  # unchanged since the last beat: not sent again
    await redis_client.delete(key)  # expired while the worker could not write, or lost by Redis
    assert await heartbeat.beat()
    third = await redis_client.hgetall(key)
    assert third[b"device"] == b"cpu" and third[b"models"] == b"m" and third[b"partitions"] == b"t:0,t:1,t:2"
