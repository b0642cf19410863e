"""Version numbers of registered models."""

from __future__ import annotations

from schemas import ModelRegistry


async def next_version(registry: ModelRegistry, model: str) -> str:
    """One more than the highest integer version of ``model`` ("1" for a new model)."""
    numbers = [int(v) for v in await registry.versions(model) if v.isdigit()]
    return str(max(numbers, default=0) + 1)
