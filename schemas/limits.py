"""Per-model limits read from a registered version's labels (``fleet models register --label k=v``).

``requires``       comma list of worker labels a worker must have to be assigned the model (placement)
``max_replicas``   most replicas the autoscaler asks for and the placement places (non-negative integer)
``memory_cap_mb``  most memory (MB = 2**20 bytes) one loaded replica may take; a load measured above it
                   fails with MODEL_LOAD_FAILED ("exceeds its memory cap") on that model only
``gpus``           comma list of the GPU indices the model may use: placement skips workers on other
                   GPUs (label ``cuda:N``), and a load that lands on another GPU fails with MODEL_LOAD_FAILED;
                   CPU workers are not affected (add ``requires=gpu`` to keep the model off them)

A bad value raises SchemaError(INVALID_REQUEST); the registry checks the labels when a version is registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ErrorCode, SchemaError

MB = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What a model's labels ask of placement, scaling and loading (None = no limit)."""

    requires: frozenset[str] = frozenset()
    max_replicas: int | None = None
    memory_cap_bytes: int | None = None
    gpus: frozenset[int] | None = None

    def allows_device(self, device: str) -> bool:
        """False when ``device`` (``cpu``, ``cuda``, ``cuda:N``) is a GPU outside ``gpus``."""
        if self.gpus is None or not device.startswith("cuda"):
            return True
        return int(device.partition(":")[2] or 0) in self.gpus

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> ModelLimits:
        """The limits in ``labels``; SchemaError(INVALID_REQUEST) names a label whose value is bad."""
        requires = frozenset(part.strip() for part in labels.get("requires", "").split(",") if part.strip())
        max_replicas = memory_cap = None
        raw = labels.get("max_replicas")
        if raw is not None:
            if not raw.strip().isdigit():
                raise SchemaError(
                    f"label max_replicas={raw!r} must be a non-negative integer", code=ErrorCode.INVALID_REQUEST
                )
            max_replicas = int(raw)
        raw = labels.get("memory_cap_mb")
        if raw is not None:
            try:
                cap_mb = float(raw)
            except ValueError:
                cap_mb = -1.0
            if not cap_mb > 0 or cap_mb == float("inf"):
                raise SchemaError(
                    f"label memory_cap_mb={raw!r} must be a number of MB > 0", code=ErrorCode.INVALID_REQUEST
                )
            memory_cap = int(cap_mb * MB)
        gpus = None
        raw = labels.get("gpus")
        if raw is not None:
            items = [part.strip() for part in raw.split(",") if part.strip()]
            if not items or not all(item.isdigit() for item in items):
                raise SchemaError(
                    f"label gpus={raw!r} must be a comma list of GPU indices (0,1)", code=ErrorCode.INVALID_REQUEST
                )
            gpus = frozenset(int(item) for item in items)
        return cls(requires, max_replicas, memory_cap, gpus)
