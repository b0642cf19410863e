"""A durable local Redis serves only once it has loaded its append-only file: a restarted stack used to send its
first commands while Valkey still answered LOADING (the stack's own start then failed)."""

from __future__ import annotations

from pathlib import Path

import redis

from fleet.local.servers import LocalRedis

KEYS = 20_000


class SlowLoadingRedis(LocalRedis):
    """Loads each key 50 µs slower (a server setting meant for tests): the load of its file takes ~1 s."""

    def command(self) -> list[str]:
        return [*super().command(), "--key-load-delay", "50"]


def test_a_restarted_durable_redis_answers_its_first_command(tmp_path: Path) -> None:
    server = SlowLoadingRedis(log_dir=tmp_path / "logs", data_dir=tmp_path / "data")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        pipe = client.pipeline(transaction=False)
        for i in range(KEYS):
            pipe.set(f"k{i}", "v" * 20)
            if i % 5_000 == 0:
                pipe.execute()
        pipe.set("marker", "kept")
        pipe.execute()
        client.close()
    finally:
        server.stop()
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.get("marker") == b"kept"  # not BusyLoadingError: start() waited for the load
        assert client.dbsize() == KEYS + 1
        client.close()
    finally:
        server.stop()


def test_a_durable_redis_fsyncs_before_it_answers(tmp_path: Path) -> None:
    # With everysec, Valkey postpones the file write while an fsync is in progress and answers meanwhile, so a
    # SIGKILL right after a write could lose what it had acknowledged (a model registered just before the kill).
    server = LocalRedis(log_dir=tmp_path / "logs", data_dir=tmp_path / "data")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        server.stop()
