"""``fleet keys create|list|revoke`` through ``main`` against the real Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas import FleetSettings, Names
from schemas.apikeys import ApiKeyStore, parse_secret

from .cli_util import connection_args, run_fleet


@pytest.fixture
def fleet_args(fleet_settings: FleetSettings, tmp_path: Path, redis_client: Any) -> list[str]:
    """Connection flags for the test's namespace (redis_client cleans its keys afterwards)."""
    return connection_args(fleet_settings, tmp_path / "home", no_gateway=True)


async def fleet(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and everything ``fleet argv`` printed."""
    code, out, err = await run_fleet(capsys, *argv)
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
