"""Reading the workers' heartbeat hashes (``names.worker_key``) for ``fleet status`` and the demo."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common import text
from fleet.client.errors import StackError
from schemas import FleetSettings, Names, now_ms


@dataclass(frozen=True)
class WorkerView:
    """What a worker last said about itself."""

    id: str
    state: str
    models: tuple[str, ...]
    pid: str
    device: str
    age_s: float  # seconds since its last heartbeat
    partitions: tuple[str, ...] = ()  # topic:partition of its current assignment
    labels: tuple[str, ...] = ()  # what placement matches a model's ``requires`` against
    follows: bool = False  # serves the placement's assignment (FLEET_WORKER_FOLLOW_ASSIGNMENT)

    def line(self) -> str:
        """One line of ``fleet status``."""
        placement = f"  labels={','.join(self.labels) or '-'}" + ("  follows its assignment" if self.follows else "")
        return (
            f"{self.id}  {self.state:<8}  models={','.join(self.models) or '-'}  device={self.device or '-'}  "
            f"pid={self.pid or '-'}  partitions={compact_partitions(self.partitions)}  heartbeat {self.age_s:.1f}s ago"
            + (placement if self.labels or self.follows else "")
        )


def compact_partitions(partitions: Sequence[str]) -> str:
    """``t:0,t:1,u:3`` as ``t[0,1] u[3]`` (pure); ``-`` when empty."""
    by_topic: dict[str, list[str]] = {}
    for entry in partitions:
        topic, _, number = entry.rpartition(":")
        by_topic.setdefault(topic, []).append(number)
    return " ".join(f"{t}[{','.join(ns)}]" for t, ns in sorted(by_topic.items())) or "-"


async def read_workers(redis: Any, names: Names) -> list[WorkerView]:
    """Every worker with a live heartbeat hash, by id."""
    ids = [text(i) for i in await redis.zrange(names.workers_key, 0, -1)]
    views = []
    now = now_ms()
    for worker_id in sorted(ids):
        raw = await redis.hgetall(names.worker_key(worker_id))
        if not raw:
            continue  # the hash expired: the worker is gone
        fields = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        try:
            age = max(0.0, (now - float(fields.get("ts_ms", "0"))) / 1000)
        except ValueError:
            age = float("nan")
        models = tuple(m for m in fields.get("models", "").split(",") if m)
        partitions = tuple(p for p in fields.get("partitions", "").split(",") if p)
        views.append(
            WorkerView(
                worker_id,
                fields.get("state", "?"),
                models,
                fields.get("pid", ""),
                fields.get("device", ""),
                age,
                partitions,
                tuple(label for label in fields.get("labels", "").split(",") if label),
                fields.get("follows") == "1",
            )
        )
    return views


async def wait_for_model_worker(settings: FleetSettings, model: str, timeout_s: float = 30.0) -> WorkerView:
    """The first ready worker that serves ``model``; StackError after ``timeout_s``."""
    redis = settings.redis.client()
    names = Names(settings.namespace)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            for view in await read_workers(redis, names):
                if view.state == "ready" and model in view.models:
                    return view
            if time.monotonic() > deadline:
                raise StackError(
                    f"no ready worker serves {model!r} after {timeout_s:.0f}s; start one with "
                    f"FLEET_WORKER_MODELS={model} python -m workers"
                )
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
