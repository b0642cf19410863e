"""API keys: the secret format, the hashed record kept in Redis, and the store the CLI and gateway share.

A secret reads ``fk_<key_id>_<random>``: ``key_id`` (12 hex characters) names the record, so a lookup
is one HGETALL by id; ``random`` is 32 bytes from ``secrets`` (URL-safe base64). Only the sha256 of the
whole secret is stored (the secret has 256 bits of entropy, so a slow KDF adds nothing) and it is
compared with ``hmac.compare_digest``. The secret itself is printed once, by ``fleet keys create``.

Record (``Names.apikey_key(key_id)``, a HASH): ``hash`` (hex sha256), ``name``, ``models``
(comma-separated allow-list; empty = every model), ``rate`` (requests per second; 0 = unlimited),
``created_ms`` and, once revoked, ``revoked_ms``. ``Names.apikeys_key`` is the SET of every id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from .envelopes import now_ms
from .errors import ErrorCode, SchemaError
from .names import Names, check_model_name
from .redis_values import text

PREFIX = "fk"
_SECRET = re.compile(r"^fk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
#: Longest Authorization/X-API-Key value even looked at (anything longer is not a key of ours).
MAX_SECRET_LEN = 128


def hash_secret(secret: str) -> str:
    """Hex sha256 of a secret (what the record stores)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_secret(secret: str) -> str | None:
    """The key id of a well-formed secret, else None (no lookup is worth doing)."""
    if len(secret) > MAX_SECRET_LEN:
        return None
    match = _SECRET.match(secret)
    return match.group(1) if match else None


def new_secret() -> tuple[str, str]:
    """A fresh (key_id, secret)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def parse_models(text: str) -> tuple[str, ...]:
    """``"m1,m2"`` -> ("m1", "m2") (validated model names; empty text = every model)."""
    return tuple(sorted({check_model_name(m.strip()) for m in text.split(",") if m.strip()}))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key as stored (the secret itself is never stored)."""

    key_id: str
    name: str
    secret_hash: str
    models: tuple[str, ...] = ()  # empty: every model
    rate: float = 0.0  # requests per second across every gateway; 0: unlimited
    created_ms: float = 0.0
    revoked_ms: float | None = None

    @property
    def revoked(self) -> bool:
        """True once ``fleet keys revoke`` ran on it."""
        return self.revoked_ms is not None

    def verify(self, secret: str) -> bool:
        """Constant-time comparison of ``secret``'s hash with the stored one."""
        return hmac.compare_digest(hash_secret(secret), self.secret_hash)

    def allows(self, model: str) -> bool:
        """Whether this key may use ``model``."""
        return not self.models or model in self.models

    def to_fields(self) -> dict[str, str]:
        """The HASH fields of the record."""
        fields = {
            "hash": self.secret_hash,
            "name": self.name,
            "models": ",".join(self.models),
            "rate": repr(self.rate),
            "created_ms": repr(self.created_ms),
        }
        if self.revoked_ms is not None:
            fields["revoked_ms"] = repr(self.revoked_ms)
        return fields

    @classmethod
    def from_fields(cls, key_id: str, raw: dict[Any, Any]) -> ApiKey:
        """Decode a HASH read from Redis (bytes or str fields); SchemaError when it is damaged."""
        fields = {text(k): text(v) for k, v in raw.items()}
        try:
            revoked = fields.get("revoked_ms")
            return cls(
                key_id=key_id,
                name=fields["name"],
                secret_hash=fields["hash"],
                models=tuple(m for m in fields.get("models", "").split(",") if m),
                rate=float(fields.get("rate", "0")),
                created_ms=float(fields.get("created_ms", "0")),
                revoked_ms=None if revoked is None else float(revoked),
            )
        except (KeyError, ValueError) as exc:
            raise SchemaError(f"API key record {key_id!r} is damaged ({exc})", code=ErrorCode.INTERNAL) from None



class ApiKeyStore:
    """Create, read, list and revoke API keys in Redis (``redis.asyncio`` client)."""

    def __init__(self, redis: Any, names: Names) -> None:
        self._redis = redis
        self._names = names

    async def create(self, name: str, models: tuple[str, ...] = (), rate: float = 0.0) -> tuple[ApiKey, str]:
        """Store a new key; returns (record, secret). The secret is not kept anywhere."""
        if not _NAME.match(name):
            raise ValueError(f"invalid key name {name!r}: use 1-128 of [A-Za-z0-9_.@-]")
        if not rate >= 0 or rate == float("inf"):
            raise ValueError(f"rate must be a finite number >= 0, got {rate}")
        for model in models:
            check_model_name(model)
        key_id, secret = new_secret()
        key = ApiKey(key_id, name, hash_secret(secret), tuple(sorted(set(models))), float(rate), now_ms())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._names.apikey_key(key_id), mapping=key.to_fields())
            pipe.sadd(self._names.apikeys_key, key_id)
            await pipe.execute()
        return key, secret

    async def get(self, key_id: str) -> ApiKey | None:
        """The record of ``key_id`` (revoked ones included), or None."""
        raw = await self._redis.hgetall(self._names.apikey_key(key_id))
        return ApiKey.from_fields(key_id, raw) if raw else None

    async def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        ids = sorted(text(i) for i in await self._redis.smembers(self._names.apikeys_key))
        keys = [key for key in [await self.get(i) for i in ids] if key is not None]
        return sorted(keys, key=lambda k: (k.created_ms, k.key_id))

    async def revoke(self, key_id: str) -> ApiKey:
        """Mark ``key_id`` revoked (kept for the listing); KeyError when there is no such key."""
        key = await self.get(key_id)
        if key is None:
            raise KeyError(key_id)
        if key.revoked_ms is None:
            revoked = now_ms()
            await self._redis.hset(self._names.apikey_key(key_id), "revoked_ms", repr(revoked))
            key = ApiKey.from_fields(key_id, {**key.to_fields(), "revoked_ms": repr(revoked)})
        return key
