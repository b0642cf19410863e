"""Generation on its own path: text-generation models served by a continuous-batching engine that streams text.

``workers.generation.consumer.GenerationConsumer`` stands where a tensor model's ``ModelConsumer`` stands;
``workers.generation.engine`` runs the sequences on a ``workers.runtimes.generative.GenerationBackend``.
"""

from __future__ import annotations

from typing import Any

from schemas import FleetError, Framework, ModelRegistry, Names, SchemaError
from schemas.text_models import TEXT_GENERATION

from .consumer import GenerationConsumer

__all__ = ["GenerationConsumer", "generative_models"]


async def generative_models(redis: Any, names: Names, models: tuple[str, ...] | list[str]) -> set[str]:
    """Which of ``models`` are text-generation models (by their default version's record; unknown ones are not)."""
    registry = ModelRegistry(redis, names)
    found: set[str] = set()
    for model in models:
        try:
            record = await registry.get(model)
        except (FleetError, SchemaError):
            continue
        if record.framework is Framework.TRANSFORMERS and record.task == TEXT_GENERATION:
            found.add(model)
    return found
