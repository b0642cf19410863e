"""Manual overrides: pin a model to a fixed number of workers (``{ns}:autoscaler:pins``, see `keys`).

A pinned model is not autoscaled; its decision says so. Pins set here at runtime win over the static
``FLEET_AUTOSCALER_PINNED`` entries.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from schemas import Names, check_model_name

from .errors import StatsError
from .keys import pins_key


class PinStore:
    """Reads and writes the pinned replica counts of models."""

    def __init__(self, redis: Any, names: Names) -> None:
        self._redis = redis
        self._key = pins_key(names)

    async def pin(self, model: str, replicas: int) -> None:
        """Hold ``model`` at ``replicas`` workers until `unpin`."""
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        await self._redis.hset(self._key, check_model_name(model), str(replicas))

    async def unpin(self, model: str) -> None:
        """Hand ``model`` back to the autoscaler."""
        await self._redis.hdel(self._key, model)

    async def pins(self) -> dict[str, int]:
        """Every runtime pin as {model: replicas}; malformed entries are skipped."""
        try:
            raw: dict[bytes, bytes] = await self._redis.hgetall(self._key)
        except RedisError as exc:
            raise StatsError(f"reading pins failed: {exc}") from exc
        pins: dict[str, int] = {}
        for model, value in raw.items():
            try:
                pins[model.decode()] = int(value)
            except (UnicodeDecodeError, ValueError):
                continue
        return pins
