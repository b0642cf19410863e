"""What a worker holds in memory, as published in Redis (``Names.residency_key``) for ``fleet status``.

JSON (readable with ``redis-cli GET``): the worker's budget (``null`` = unlimited), the most the sizes
of its assigned models may add up to (budget + overcommit), the bytes resident now and one entry per
resident model version, least recently used first. Any decode failure raises SchemaError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import SchemaError

RESIDENCY_VERSION = 1


@dataclass(frozen=True, slots=True)
class ResidentModel:
    """One model version resident on a worker."""

    model: str
    version: str
    size_bytes: int
    loaded_ms: float
    last_used_ms: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "size_bytes": self.size_bytes,
            "loaded_ms": self.loaded_ms,
            "last_used_ms": self.last_used_ms,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> ResidentModel:
        try:
            return cls(
                str(obj["model"]),
                str(obj["version"]),
                int(obj["size_bytes"]),
                float(obj["loaded_ms"]),
                float(obj["last_used_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"bad resident model entry: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class WorkerResidency:
    """A worker's memory budget and resident models (least recently used first)."""

    worker: str
    budget_bytes: int | None
    assignable_bytes: int | None
    resident_bytes: int
    models: tuple[ResidentModel, ...]
    ts_ms: float
    v: int = RESIDENCY_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "v": self.v,
                "worker": self.worker,
                "budget_bytes": self.budget_bytes,
                "assignable_bytes": self.assignable_bytes,
                "resident_bytes": self.resident_bytes,
                "models": [m.to_wire() for m in self.models],
                "ts_ms": self.ts_ms,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> WorkerResidency:
        try:
            obj = json.loads(data)
            if not isinstance(obj, dict):
                raise TypeError("not an object")
            if int(obj["v"]) > RESIDENCY_VERSION:
                raise SchemaError(f"residency version {obj['v']} is newer than {RESIDENCY_VERSION}")
            budget, assignable = obj["budget_bytes"], obj["assignable_bytes"]
            return cls(
                worker=str(obj["worker"]),
                budget_bytes=None if budget is None else int(budget),
                assignable_bytes=None if assignable is None else int(assignable),
                resident_bytes=int(obj["resident_bytes"]),
                models=tuple(ResidentModel.from_wire(m) for m in obj["models"]),
                ts_ms=float(obj["ts_ms"]),
                v=int(obj["v"]),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise SchemaError(f"undecodable worker residency: {exc!r}") from None
