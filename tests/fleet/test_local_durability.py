"""The local stack's embedded Redis is durable: models and API keys survive a SIGKILL and `fleet down`/`up`."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import LocalRedis
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import KafkaSettings, ModelRegistry, Names, RedisSettings
from schemas.apikeys import ApiKeyStore, hash_secret

pytestmark = pytest.mark.integration


def servers_only(home: Path, **overrides: object) -> StackConfig:
    """A local stack of just the embedded broker and Redis (no gateway, no workers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "KAFKA_BOOTSTRAP", "REDIS_URL"))}
    return StackConfig(home=home, gateway=False, workers=0, env=env, **overrides)  # type: ignore[arg-type]


async def test_sigkilled_redis_restarted_on_its_dir_keeps_models_and_keys(tmp_path: Path) -> None:
    names = Names("durable")
    server = LocalRedis(log_dir=tmp_path / "logs", data_dir=tmp_path / "redis")
    server.start()
    try:
        client = RedisSettings(url=server.url).client()
        try:
            await ModelRegistry(client, names).register(build_record("tiny", "1", tiny_mlp(tmp_path / "t.onnx")))
            key, secret = await ApiKeyStore(client, names).create("ci", (), 0.0)
        finally:
            await client.aclose()
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        server.stop()  # reaps it
        server.start()  # same port, same directory
        client = RedisSettings(url=server.url).client()
        try:
            assert await ModelRegistry(client, names).models() == ["tiny"]
            assert (await ModelRegistry(client, names).get("tiny")).version == "1"
            found = await ApiKeyStore(client, names).get(key.key_id)
            assert found is not None and found.secret_hash == hash_secret(secret)
        finally:
            await client.aclose()
    finally:
        server.stop()


async def test_ephemeral_redis_keeps_nothing(tmp_path: Path) -> None:
    """The test fixtures' mode: no data directory, nothing written."""
    server = LocalRedis(log_dir=tmp_path / "logs")
    server.start()
    try:
        client = RedisSettings(url=server.url).client()
        await client.set("k", "v")
        await client.aclose()
        server.stop()
        server.start()
        client = RedisSettings(url=server.url).client()
        assert await client.get("k") is None
        await client.aclose()
    finally:
        server.stop()
    assert not list((tmp_path / "logs").glob("*.aof")) and not (tmp_path / "logs" / "appendonlydir").exists()


async def test_down_then_up_keeps_models_and_keys_and_recreates_topics(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with LocalStack(servers_only(home)) as stack:
        names = Names(stack.config.namespace)
        client = stack.settings.redis.client()
        try:
            await ModelRegistry(client, names).register(build_record("tiny", "1", tiny_mlp(tmp_path / "t.onnx")))
            key, _ = await ApiKeyStore(client, names).create("ci", (), 0.0)
        finally:
            await client.aclose()
    assert (home / "redis").is_dir()
    async with LocalStack(servers_only(home)) as stack:  # a new broker and Redis on new ports
        client = stack.settings.redis.client()
        try:
            assert await ModelRegistry(client, names).models() == ["tiny"]
            assert await ApiKeyStore(client, names).get(key.key_id) == key
        finally:
            await client.aclose()
        # The new (memory-only) broker got the topics of the remembered model, with the intended partitions.
        admin = AIOKafkaAdminClient(**KafkaSettings(bootstrap=stack.kafka_bootstrap).client_kwargs())
        await admin.start()
        try:
            topics = set(await admin.list_topics())
        finally:
            await admin.close()
        assert set(names.model_topics("tiny")) <= topics
