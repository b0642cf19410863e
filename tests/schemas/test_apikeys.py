"""API keys: secret format, hashing and constant-time verification, allow-lists, and the Redis store."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import Names, SchemaError
from schemas.apikeys import ApiKey, ApiKeyStore, hash_secret, new_secret, parse_models, parse_secret


def test_secret_names_its_key_id_and_only_its_hash_is_kept() -> None:
    key_id, secret = new_secret()
    assert secret.startswith(f"fk_{key_id}_") and len(key_id) == 12
    assert parse_secret(secret) == key_id
    key = ApiKey(key_id, "ci", hash_secret(secret))
    assert secret not in key.to_fields().values()
    assert key.verify(secret)
    assert not key.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"))


@pytest.mark.parametrize(
    "text", ["", "fk_", "fk_abc_def", "Bearer fk_0123456789ab_" + "a" * 43, "fk_0123456789AB_" + "a" * 43, "x" * 500]
)
def test_malformed_secrets_have_no_key_id(text: str) -> None:
    assert parse_secret(text) is None


def test_allow_list() -> None:
    everything = ApiKey("0123456789ab", "all", "h")
    assert everything.allows("anything")
    some = ApiKey("0123456789ab", "some", "h", models=("a", "b"))
    assert some.allows("a") and not some.allows("c")
    assert parse_models(" b, a ,,a") == ("a", "b")
    with pytest.raises(SchemaError):
        parse_models("bad name!")


def test_record_round_trips_through_hash_fields() -> None:
    key = ApiKey("0123456789ab", "ci", "h", ("m",), 2.5, 1000.0, 2000.0)
    raw = {k.encode(): v.encode() for k, v in key.to_fields().items()}
    assert ApiKey.from_fields(key.key_id, raw) == key
    with pytest.raises(SchemaError):
        ApiKey.from_fields("0123456789ab", {b"name": b"x"})  # no hash


async def test_store_create_list_revoke(redis_client: Any, names: Names) -> None:
    store = ApiKeyStore(redis_client, names)
    key, secret = await store.create("ci", ("tiny",), 5.0)
    stored = await redis_client.hgetall(names.apikey_key(key.key_id))
    assert secret.encode() not in stored.values()
    assert stored[b"hash"] == hash_secret(secret).encode()
    fetched = await store.get(key.key_id)
    assert fetched == key and fetched.verify(secret) and not fetched.revoked
    other, _ = await store.create("ops")
    assert [k.key_id for k in await store.list()] == [key.key_id, other.key_id]
    revoked = await store.revoke(key.key_id)
    assert revoked.revoked and (await store.get(key.key_id)) == revoked
    assert await store.get("ffffffffffff") is None
    with pytest.raises(KeyError):
        await store.revoke("ffffffffffff")
    with pytest.raises(ValueError):
        await store.create("bad name")
    with pytest.raises(ValueError):
        await store.create("ok", rate=-1)
