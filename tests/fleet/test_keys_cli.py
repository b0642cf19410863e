"""``fleet keys create|list|revoke`` through ``main`` against the real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fleet.cli import main
from fleet.localservers import free_port
from schemas import FleetSettings, Names
from schemas.apikeys import ApiKeyStore, parse_secret


@pytest.fixture
def fleet_args(fleet_settings: FleetSettings, tmp_path: Path, redis_client: Any) -> list[str]:
    """Connection flags for the test's namespace (redis_client cleans its keys afterwards)."""
    return [
        "--kafka", fleet_settings.kafka.bootstrap, "--redis", fleet_settings.redis.url,
        "--namespace", fleet_settings.namespace, "--home", str(tmp_path / "home"),
        "--url", f"http://127.0.0.1:{free_port()}",
    ]  # fmt: skip


async def fleet(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out + err


async def test_create_list_revoke(
    fleet_args: list[str], names: Names, redis_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await fleet(capsys, "keys", "create", "ci-bot", "--models", "tiny,other", "--rate", "5/s", *fleet_args)
    assert code == 0, out
    secret = out.splitlines()[0]
    key_id = parse_secret(secret)
    assert key_id is not None and f"created key {key_id}" in out
    stored = await ApiKeyStore(redis_client, names).get(key_id)
    assert stored is not None and stored.verify(secret)
    assert stored.models == ("other", "tiny") and stored.rate == 5.0 and stored.name == "ci-bot"

    code, out = await fleet(capsys, "keys", "list", *fleet_args)
    assert code == 0 and key_id in out and "other,tiny" in out and "active" in out
    assert secret not in out

    code, out = await fleet(capsys, "keys", "revoke", key_id, *fleet_args)
    assert code == 0 and f"revoked key {key_id}" in out
    code, out = await fleet(capsys, "keys", "list", *fleet_args)
    assert "revoked" in out

    code, out = await fleet(capsys, "keys", "revoke", "ffffffffffff", *fleet_args)
    assert code == 1 and "no API key" in out


async def test_bad_arguments_are_refused(fleet_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out = await fleet(capsys, "keys", "create", "bad name", *fleet_args)
    assert code == 1 and "invalid key name" in out
    code, out = await fleet(capsys, "keys", "create", "ok", "--models", "bad/model", *fleet_args)
    assert code == 1
    with pytest.raises(SystemExit):
        await fleet(capsys, "keys", "create", "ok", "--rate", "fast", *fleet_args)
