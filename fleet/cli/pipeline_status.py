"""``fleet status``'s pipelines section: each pipeline's current version and, per step, its model's lag and
workers (from what the status reads for the models: the live lag snapshot, the worker heartbeats and the
autoscaler's decisions). A step's lag is its model's topic lag, shared with the model's other callers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet.local.heartbeats import WorkerView
from schemas import FleetError, Names
from schemas.pipeline_plan import PipelinePlan
from schemas.pipelines import PipelineStore


class ModelRow(Protocol):
    """What the status knows of a model (``fleet.cli.status.ModelStatus``)."""

    model: str
    default_version: str | None
    lag: int | None
    desired: int | None


@dataclass
class StepStatus:
    """One step of a pipeline: its model (the pinned version, else the model's default) and that model's load."""

    step: str
    model: str
    version: str | None
    lag: int | None = None
    workers: int = 0  # ready workers whose heartbeat lists the model
    desired: int | None = None  # the autoscaler's last decision for the model
    registered: bool = True


@dataclass
class PipelineStatus:
    """One pipeline's current version and its steps, in the order they run."""

    pipeline: str
    version: int
    steps: list[StepStatus] = field(default_factory=list)


async def read_pipelines(redis: Any, names: Names, problems: list[str]) -> list[PipelinePlan]:
    """The current version of every applied pipeline; one that cannot be read is a problem, not an error."""
    store = PipelineStore(redis, names)
    plans: list[PipelinePlan] = []
    try:
        pipelines = await store.names()
    except FleetError as exc:
        problems.append(f"pipelines: {exc.message}")
        return plans
    for name in pipelines:
        try:
            plans.append(await store.get(name))
        except FleetError as exc:
            problems.append(f"pipeline {name}: {exc.message}")
    return plans


def pipeline_rows(
    plans: Sequence[PipelinePlan], models: Sequence[ModelRow], workers: Sequence[WorkerView]
) -> list[dict[str, Any]]:
    """The pipelines section as JSON-able dicts (pure)."""
    by_model: Mapping[str, ModelRow] = {m.model: m for m in models}
    ready: dict[str, int] = {}
    for view in workers:
        if view.state == "ready":
            for model in view.models:
                ready[model] = ready.get(model, 0) + 1
    rows = []
    for plan in plans:
        status = PipelineStatus(plan.name, plan.version)
        for name in plan.order():
            step = plan.step(name)
            row = by_model.get(step.model)
            status.steps.append(
                StepStatus(
                    name,
                    step.model,
                    step.version or (row.default_version if row is not None else None),
                    None if row is None else row.lag,
                    ready.get(step.model, 0),
                    None if row is None else row.desired,
                    row is not None,
                )
            )
        rows.append(dataclasses.asdict(status))
    return rows


def pipeline_lines(pipelines: Sequence[dict[str, Any]], table: Any) -> list[str]:
    """The text form: a line per pipeline, then a row per step (``table`` aligns the columns; pure)."""
    if not pipelines:
        return []
    lines = [f"pipelines {len(pipelines)}"]
    for p in pipelines:
        lines.append(f"  {p['pipeline']} v{p['version']}: {' -> '.join(s['step'] for s in p['steps'])}")
        rows = [["STEP", "MODEL", "LAG", "WORKERS", "DESIRED"]]
        for s in p["steps"]:
            model = f"{s['model']}:{s['version'] or '-'}" + ("" if s["registered"] else " (not registered)")
            lag = "-" if s["lag"] is None else str(s["lag"])
            desired = "-" if s["desired"] is None else str(s["desired"])
            rows.append([s["step"], model, lag, str(s["workers"]), desired])
        lines += table(rows, indent="    ")
    return lines


__all__ = ["PipelineStatus", "StepStatus", "pipeline_lines", "pipeline_rows", "read_pipelines"]
