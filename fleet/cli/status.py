"""``fleet status``: the stack's processes, the workers' heartbeats, per-model load and scaling, and the GPUs.

Sources: ``stack.json`` (processes), the gateway's readiness probe, the worker heartbeat hashes, each
worker's resident models (`schemas.residency`), the pool (workers that follow the placement: how many
models each is assigned, serves and holds resident), the model registry, a live `LagCollector` snapshot (lag
per model), the autoscaler's last decision per model (desired vs actual, the smoothed arrival and
completion rates, the reason), each pipeline's steps with their models' lag and workers
(`fleet.cli.pipeline_status`), the placement status per model (where its replicas are assigned, or why
not: ScheduleFailed), the runtime pins and the GPU inventory. Plain aligned text, or ``--json``
for machines. Exit status 0 when the gateway is ready.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from autoscaler import state as autoscaler_state
from autoscaler.state import GpuInventory, StateError
from common import text
from fleet.cli.pipeline_status import pipeline_lines, pipeline_rows, read_pipelines
from fleet.client.connection import Target
from fleet.client.http import FleetClient
from fleet.client.stackfile import StackInfo, pid_alive
from fleet.local.heartbeats import WorkerView, read_workers
from schemas import FleetSettings, ModelRegistry, Names, SchemaError, now_ms
from schemas.residency import WorkerResidency

MB = 1 << 20
#: Longest the live lag snapshot may take (an unreachable broker must not hang the command).
LAG_TIMEOUT_S = 5.0


@dataclass
class ModelStatus:
    """One model's row: registry, live lag, the autoscaler's last decision and pin."""

    model: str
    default_version: str | None
    partitions: int | None = None
    lag: int | None = None
    arrival_rate: float | None = None
    completion_rate: float | None = None
    desired: int | None = None
    actual: int | None = None
    pinned: int | None = None
    capped_by_partitions: bool = False
    reason: str = ""
    decided_s_ago: float | None = None
    placement: str | None = None  # autoscaler.state.PlacementState (None: no placement scheduler)
    placement_workers: str = ""
    placement_reason: str = ""


@dataclass
class PoolWorker:
    """One worker of the pool (it follows the placement scheduler's assignment): its models by count."""

    worker: str
    state: str
    device: str
    assigned: int | None  # in its assignment set (None: unreadable)
    serving: int  # in its heartbeat: the assigned models it has picked up
    resident: int | None  # loaded now (None: no residency published)
    resident_bytes: int | None = None
    budget_bytes: int | None = None  # None: unlimited, or no residency published
    heartbeat_s_ago: float = 0.0


@dataclass
class StatusReport:
    """Everything ``fleet status`` shows."""

    gateway_url: str
    gateway_ready: bool
    kafka: str
    redis: str
    namespace: str
    stack: dict[str, Any] | None = None
    workers: list[dict[str, Any]] = field(default_factory=list)
    residency: list[dict[str, Any]] = field(default_factory=list)  # schemas.residency.WorkerResidency per worker
    pool: list[dict[str, Any]] = field(default_factory=list)  # PoolWorker per worker following the placement
    models: list[ModelStatus] = field(default_factory=list)
    pipelines: list[dict[str, Any]] = field(default_factory=list)  # fleet.cli.pipeline_status.PipelineStatus each
    gpus: list[dict[str, Any]] = field(default_factory=list)
    autoscaler_leader: str | None = None  # holder of the autoscalers' leader lease (None: nobody leads)
    problems: list[str] = field(default_factory=list)


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``status``."""
    status = commands.add_parser(
        "status", parents=[common], help="processes, workers, per-model lag and scaling, GPUs (exit 0: gateway ready)"
    )
    status.add_argument("--json", action="store_true", help="one JSON object instead of text")
    status.set_defaults(handler=show_status)


async def show_status(target: Target, args: argparse.Namespace) -> int:
    """``fleet status``."""
    report = await gather_status(target)
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2, sort_keys=True))
    else:
        print(render(report))
    return 0 if report.gateway_ready and not any(p.startswith("redis") for p in report.problems) else 1


def _stack_dict(info: StackInfo) -> dict[str, Any]:
    return {
        "pid": info.pid,
        "running": info.owner_alive(),
        "up_s": round(time.time() - info.started_ms / 1000, 1),
        "home": info.home,
        "autoscale": info.autoscale,
        "processes": [
            {"name": p.name, "role": p.role, "pid": p.pid, "alive": pid_alive(p.pid), "log": p.log}
            for p in info.processes
        ],
    }


async def gather_status(target: Target) -> StatusReport:
    """Collect the report; unreachable parts become ``problems``, never exceptions."""
    settings = target.settings
    async with FleetClient(target.url, timeout_s=2.0) as client:
        ready = await client.ready()
    info = target.stack or StackInfo.read(target.home)
    report = StatusReport(
        target.url,
        ready,
        settings.kafka.bootstrap,
        settings.redis.url,
        settings.namespace,
        _stack_dict(info) if info is not None else None,
    )
    names = Names(settings.namespace)
    redis = settings.redis.client()
    try:
        workers = await read_workers(redis, names)
        report.residency = await _read_residency(redis, names, report)
        report.pool = await _read_pool(redis, names, workers, report.residency)
        registry = ModelRegistry(redis, names)
        models = [ModelStatus(m, await registry.default_version(m)) for m in await registry.models()]
        await _add_scaling(redis, names, models, report)
        plans = await read_pipelines(redis, names, report.problems)
        inventory = await autoscaler_state.read_gpus(redis, names)
        report.autoscaler_leader = await autoscaler_state.read_leader(redis, names)
    except (RedisError, StateError) as exc:
        report.problems.append(f"redis unreachable: {exc}")
        return report
    finally:
        await redis.aclose()
    report.workers = [dataclasses.asdict(w) for w in workers]
    report.gpus = [_gpu_dict(inv) for inv in inventory]
    await _add_lag(settings, models, report)
    report.models = models
    report.pipelines = pipeline_rows(plans, models, workers)
    return report


async def _read_residency(redis: Any, names: Names, report: StatusReport) -> list[dict[str, Any]]:
    """Each worker's published residency (memory budget, resident models by last use)."""
    ids = sorted(text(i) for i in await redis.zrange(names.workers_key, 0, -1))
    states = []
    for worker_id, raw in zip(ids, await redis.mget([names.residency_key(i) for i in ids]) if ids else [], strict=True):
        if raw is None:
            continue  # expired, or a worker from before residency was published
        try:
            state = WorkerResidency.from_bytes(raw)
        except SchemaError as exc:
            report.problems.append(f"residency of {worker_id}: {exc.message}")
            continue
        states.append(dataclasses.asdict(state))
    return states


async def _read_pool(
    redis: Any, names: Names, workers: Sequence[WorkerView], residency: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The pool: each worker that follows its assignment, with its assigned (one pipelined SCARD each), served
    and resident model counts."""
    followers = [w for w in workers if w.follows]
    if not followers:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for view in followers:
            pipe.scard(names.assignment_key(view.id))
        counts = await pipe.execute()
    resident = {state["worker"]: state for state in residency}
    pool = []
    for view, assigned in zip(followers, counts, strict=True):
        state = resident.get(view.id)
        pool.append(
            PoolWorker(
                view.id,
                view.state,
                view.device,
                int(assigned),
                len(view.models),
                None if state is None else len(state["models"]),
                None if state is None else state["resident_bytes"],
                None if state is None else state["budget_bytes"],
                round(view.age_s, 1),
            )
        )
    return [dataclasses.asdict(p) for p in pool]


def _pool_lines(pool: Sequence[dict[str, Any]]) -> list[str]:
    """``pool`` section of the text report: a summary line, then one row per pool worker (pure)."""
    if not pool:
        return []
    states: dict[str, int] = {}
    for worker in pool:
        states[worker["state"]] = states.get(worker["state"], 0) + 1
    by_state = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    lines = [f"pool      {len(pool)} worker{'s' if len(pool) != 1 else ''} following the placement: {by_state}"]
    rows = [["WORKER", "STATE", "ASSIGNED", "SERVING", "RESIDENT", "MEMORY", "DEVICE", "HEARTBEAT"]]
    for w in pool:
        if w["resident_bytes"] is None:
            memory = "-"
        else:
            budget = "unlimited" if w["budget_bytes"] is None else f"{w['budget_bytes'] / MB:.0f} MB"
            memory = f"{w['resident_bytes'] / MB:.0f} MB of {budget}"
        rows.append(
            [w["worker"], w["state"], _num(w["assigned"]), str(w["serving"]), _num(w["resident"]), memory,
             w["device"] or "-", f"{w['heartbeat_s_ago']:.1f}s ago"]
        )  # fmt: skip
    return lines + table(rows)


#: A pool worker's line in the workers list names its models up to this many (then their count: see ``pool``).
WORKER_LINE_MODELS = 5


def _worker_line(worker: dict[str, Any]) -> str:
    """A worker's line; a pool worker serving many models shows their count instead of the list."""
    view = WorkerView(**worker)
    if view.follows and len(view.models) > WORKER_LINE_MODELS:
        view = dataclasses.replace(view, models=(f"<{len(view.models)} models>",))
    return view.line()


def _ago(now: float, then_ms: float) -> str:
    return f"{max(0.0, now - then_ms) / 1000:.0f}s ago"


def _residency_lines(states: Sequence[dict[str, Any]]) -> list[str]:
    """``residency`` lines of the text report: budget use, then resident models, most recently used first."""
    lines = []
    now = now_ms()
    for state in states:
        budget = "unlimited" if state["budget_bytes"] is None else f"{state['budget_bytes'] / MB:.1f} MB"
        models = [
            f"{m['model']}:{m['version']} {m['size_bytes'] / MB:.1f} MB, used {_ago(now, m['last_used_ms'])}"
            for m in reversed(state["models"])
        ]
        lines.append(f"  {state['worker']}  {state['resident_bytes'] / MB:.1f} MB of {budget}  {len(models)} resident")
        lines += [f"    {line}" for line in models]
    return lines


async def _add_scaling(redis: Any, names: Names, models: list[ModelStatus], report: StatusReport) -> None:
    pins = await autoscaler_state.read_pins(redis, names)
    decisions = await autoscaler_state.read_decisions(redis, names, [m.model for m in models])
    placements = await autoscaler_state.read_placements(redis, names, [m.model for m in models])
    now = now_ms()
    for row in models:
        row.pinned = pins.get(row.model)
        placement = placements.get(row.model)
        if placement is not None:
            row.placement = placement.get("state")
            row.placement_workers = placement.get("workers", "")
            row.placement_reason = placement.get("reason", "")
        decision = decisions.get(row.model)
        if decision is None:
            continue
        row.desired, row.actual, row.reason = decision.desired, decision.actual, decision.reason
        row.capped_by_partitions = decision.capped_by_partitions
        row.decided_s_ago = round(max(0.0, (now - decision.ts_ms) / 1000), 1)
        if decision.pinned and row.pinned is None:
            row.pinned = decision.desired  # a static pin (FLEET_AUTOSCALER_PINNED)
        for name in ("arrival_rate", "completion_rate"):
            value = decision.inputs.get(name)
            if isinstance(value, int | float):
                setattr(row, name, float(value))


async def _add_lag(settings: FleetSettings, models: list[ModelStatus], report: StatusReport) -> None:
    if not models:
        return
    try:
        loads = await asyncio.wait_for(
            autoscaler_state.measure_load(settings, [m.model for m in models]), LAG_TIMEOUT_S
        )
    except (StateError, KafkaError, OSError, TimeoutError) as exc:
        report.problems.append(f"kafka: no lag snapshot ({type(exc).__name__}: {exc})")
        return
    for row in models:
        load = loads.get(row.model)
        if load is not None and load.topic_exists:
            row.lag, row.partitions = load.lag, load.partition_count


def _gpu_dict(inventory: GpuInventory) -> dict[str, Any]:
    return {
        "host": inventory.host,
        "total": inventory.total,
        "allocated": inventory.allocated,
        "available": inventory.available,
        "gpus": [g.to_json() for g in inventory.gpus],
    }


def table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Rows as left-aligned columns (pure)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _num(value: float | int | None, fmt: str = "{:.1f}") -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else fmt.format(value)


def _placement_line(m: ModelStatus) -> str:
    where = f" on {m.placement_workers}" if m.placement_workers else ""
    why = f": {m.placement_reason}" if m.placement_reason else ""
    return f"  placement {m.model}: {m.placement}{where}{why}"


def render(report: StatusReport) -> str:
    """The text form of ``report``."""
    lines: list[str] = []
    stack = report.stack
    if stack is None:
        lines.append("local stack: none")
    else:
        alive = "running" if stack["running"] else "NOT RUNNING (stale stack.json; `fleet down` cleans up)"
        mode = "autoscaled" if stack["autoscale"] else "fixed workers"
        up = f"up {stack['up_s']:.0f}s"
        lines.append(f"local stack: {alive}, pid {stack['pid']}, {up}, {mode}, logs {stack['home']}/logs")
        procs = [["NAME", "ROLE", "PID", "STATE"]]
        for p in stack["processes"]:
            procs.append([p["name"], p["role"], str(p["pid"]), "running" if p["alive"] else "gone"])
        lines += table(procs)
    lines.append(f"gateway   {report.gateway_url}  {'ready' if report.gateway_ready else 'NOT READY'}")
    lines.append(f"kafka     {report.kafka}")
    lines.append(f"redis     {report.redis}")
    lines.append(f"namespace {report.namespace}")
    lines.append(f"workers   {len(report.workers)}")
    lines += [f"  {_worker_line(w)}" for w in report.workers]
    lines += _pool_lines(report.pool)
    if report.residency:
        lines.append("residency")
        lines += _residency_lines(report.residency)
    lines.append(f"models    {len(report.models) or '(none)'}")
    rows = [["MODEL", "DEFAULT", "PARTS", "LAG", "ARRIVAL/s", "DONE/s", "DESIRED", "ACTUAL", "PINNED", "DECIDED"]]
    for m in report.models:
        capped = "*" if m.capped_by_partitions else ""
        decided = "-" if m.decided_s_ago is None else f"{m.decided_s_ago:.0f}s ago"
        rows.append(
            [m.model, m.default_version or "-", _num(m.partitions), _num(m.lag), _num(m.arrival_rate),
             _num(m.completion_rate), _num(m.desired) + capped, _num(m.actual), _num(m.pinned), decided]
        )  # fmt: skip
    if report.models:
        lines += table(rows)
        lines += [f"  why {m.model}: {m.reason}" for m in report.models if m.reason]
        lines += [_placement_line(m) for m in report.models if m.placement]
        if any(m.capped_by_partitions for m in report.models):
            lines.append("  * capped by the topic's partition count")
    lines += pipeline_lines(report.pipelines, table)
    if report.autoscaler_leader is not None:
        lines.append(f"autoscaler leader {report.autoscaler_leader}")
    if not report.gpus:
        lines.append("gpus      (no inventory reported: no autoscaler running)")
    for inv in report.gpus:
        counts = f"{inv['total']} total, {inv['allocated']} allocated, {inv['available']} available"
        lines.append(f"gpus      {inv['host']}: {counts}")
        for g in inv["gpus"]:
            memory = f"mem {g['mem_used'] / 2**30:.1f}/{g['mem_total'] / 2**30:.1f} GiB"
            workers = ",".join(g["workers"]) or "-"
            lines.append(f"  gpu {g['index']}  {g['name']}  util {g['util']:.0f}%  {memory}  workers={workers}")
    lines += [f"problem   {p}" for p in report.problems]
    return "\n".join(lines)
