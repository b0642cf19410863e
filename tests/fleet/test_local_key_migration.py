"""``fleet up`` on a home whose durable Redis an older version wrote (keys without a hash tag) migrates it at start."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import aiohttp
import pytest

from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import LocalRedis
from fleet.local.stack import LocalStack
from fleet.models.artifacts import build_record
from schemas import ModelRegistry, Names, RedisSettings
from schemas.apikeys import ApiKeyStore
from schemas.key_migration import classify

from .test_local_durability import servers_only

pytestmark = pytest.mark.integration


async def test_up_on_an_old_layout_redis_serves_its_models_and_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home, names = tmp_path / "home", Names("fleet")
    server = LocalRedis(log_dir=tmp_path / "logs", data_dir=home / "redis")
    server.start()
    try:
        client = RedisSettings(url=server.url).client()
        try:
            await ModelRegistry(client, names).register(build_record("tiny", "1", tiny_mlp(tmp_path / "t.onnx")))
            key, _ = await ApiKeyStore(client, names).create("ci", (), 0.0)
            # What the previous version left: the same keys under their old names (RENAME keeps each value).
            for raw in [k async for k in client.scan_iter(match="fleet:*")]:
                new = bytes(raw).decode()
                rest = new.split("}:", 1)[1]
                await client.rename(new, f"fleet:{rest}" if rest != "epoch" else "fleet:registry:epoch")
            assert await ModelRegistry(client, names).models() == []
            assert all(classify(names, bytes(k).decode()) for k in await client.keys("fleet:*"))
        finally:
            await client.aclose()
    finally:
        server.stop()

    caplog.set_level(logging.INFO, logger="fleet.stack")
    config = dataclasses.replace(servers_only(home), gateway=True)
    async with LocalStack(config) as stack:
        async with aiohttp.ClientSession() as http, http.get(f"{stack.url}/v2/models/tiny") as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["name"] == "tiny"
        client = stack.settings.redis.client()
        try:
            assert await ApiKeyStore(client, names).get(key.key_id) == key
            assert not [k for k in await client.keys("fleet:*") if classify(names, bytes(k).decode())]
        finally:
            await client.aclose()
    assert "migrated to the current one: namespace fleet: moved 7 keys" in caplog.text
