"""A pool worker added under load: seconds from the autoscaler's decision to the new worker consuming.

Real processes on this machine: the embedded broker and Redis, a gateway, the autoscaler in pool mode (this
process: `AutoscalerService` with a `PoolBackend` whose local runner notes the instant of each scale call)
and ``python -m workers`` pool workers it spawns. One CPU-bound model (bench.autoscale_fleet's, on
`PARTITIONS` partitions) is served by one pool worker; an open-loop load of ``--load`` x one worker's measured
capacity makes the autoscaler want a second replica, so the pool grows to two workers and the placement puts
the model on both. For the worker added, it prints, from the decision (the pool runner's scale call):

* ``spawned``: the process started (or the warm standby was activated: ``--standby``, the local runner's
  FLEET_AUTOSCALER_POOL_STANDBY; the run waits until the standby stands by before it sends load);
* ``ready``: the worker says ready (its log);
* ``assigned``: it picked up the model from its assignment (the worker announces itself once subscribed to
  the placement news, the autoscaler places at once and its news names the worker: no poll in between);
* ``consuming``: it owns partitions of the model's topic, positioned at the committed offsets, and fetches
  (the first "now owns ... partition(s)" line of its log; the topic has a backlog, so its first fetch
  returns records). The old owner lets those partitions go once its round in hand is done and committed
  (with this CPU-bound model, up to a round's time); the new one retries its claim every 0.1-0.2 s meanwhile;
* ``answered``: the first correct answer it computed reached the client (the reply names the worker).

Each run is a fresh stack (``--runs``); it prints each run's figures and their medians, against the target
"consuming within 2 s of the decision". The machine is shared with other work: figures are upper bounds.

``--baseline`` runs the same without a standby first (in the same session, for a ratio).

    python -m bench.pool_scale [--runs 3] [--load 1.6] [--standby 1] [--baseline] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autoscaler import AutoscalerSettings
from autoscaler.backends import PoolBackend
from autoscaler.pool_size import PoolSizer
from autoscaler.service import AutoscalerService
from bench.autoscale_fleet import (
    BATCH_REQUESTS,
    KAFKA,
    MODEL,
    PARTITIONS,
    ROWS_PER_REQUEST,
    ModelKit,
    RecordingBackend,
    build_model,
)
from bench.autoscale_load import OpenLoop
from bench.autoscale_report import median, since
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, FleetSettings, KafkaSettings, ModelRegistry, Names, RedisSettings
from schemas.topics import ensure_model_topics

#: The target of the issue.
TARGET_S = 2.0
#: Pool workers' settings: the product's defaults (heartbeat, lease timings), one intra-op thread, and rounds
#: short enough for this slow model (see bench.autoscale_fleet.WORKER_ENV), text logs with milliseconds.
WORKER_ENV = {
    "FLEET_WORKER_INTRA_OP_THREADS": "1",
    "FLEET_WORKER_MAX_FETCH_RECORDS": str(2 * BATCH_REQUESTS),
    "FLEET_LOG_FORMAT": "text",
}

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+ (.*)$")


@dataclass
class Milestones:
    """Wall-clock instants (epoch seconds) a pool worker's log shows; None when absent."""

    ready: float | None = None
    assigned: float | None = None
    consuming: float | None = None


def parse_pool_log(text: str) -> Milestones:
    """The first ready, assignment and partition-ownership lines of a pool worker's log (pure)."""
    found = Milestones()
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        at = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        message = match.group(2)
        if found.ready is None and message.startswith("worker ") and message.endswith(" ready"):
            found.ready = at
        elif found.assigned is None and message.startswith("worker ") and message.endswith(" (assigned)"):
            found.assigned = at
        elif found.consuming is None and message.startswith("pool: worker ") and " now owns " in message:
            found.consuming = at
    return found


@dataclass
class RunResult:
    """One run: the added worker's milestones in seconds after the decision (None: not reached)."""

    worker: str | None
    standby: bool  # the worker added was the activated standby
    spawned_s: float | None
    ready_s: float | None
    assigned_s: float | None
    consuming_s: float | None
    answered_s: float | None  # its first correct answer reached the client
    answered: int
    failed: int
    errors: list[str]  # a few of the failures' texts


async def one_run(kit: ModelKit, home: Path, load: float, timeout_s: float, standby: int) -> RunResult:
    """A fresh stack with one pool worker, the load, and the second worker the autoscaler adds for it."""
    async with contextlib.AsyncExitStack() as exits:
        env = dict(os.environ) | {"FLEET_GATEWAY_ID": f"bench-pool-{home.name}"}
        stack = await exits.enter_async_context(LocalStack(StackConfig(home=home, workers=0, models=(), env=env)))
        fleet = FleetSettings(
            namespace=stack.config.namespace,
            kafka=KafkaSettings(bootstrap=stack.kafka_bootstrap, partitions=PARTITIONS, **KAFKA),
            redis=RedisSettings(url=stack.redis_url),
        )
        names = Names(fleet.namespace)
        redis = fleet.redis.client()
        exits.push_async_callback(redis.aclose)
        record = build_record(MODEL, "1", kit.path, batching=BatchingConfig(BATCH_REQUESTS * ROWS_PER_REQUEST))
        await ModelRegistry(redis, names).register(record)
        await ensure_model_topics(fleet.kafka, names, MODEL, PARTITIONS)

        t0 = time.monotonic()
        runner = RecordingBackend(
            fleet,
            log_dir=home / "workers",
            extra_env=WORKER_ENV,
            gpu_count=0,
            t0=t0,
            drain_timeout_s=30.0,
            pool=True,
            standby=standby,
        )
        settings = AutoscalerSettings(
            models=(MODEL,),
            interval_s=0.5,
            target_drain_s=5.0,
            min_replicas=1,
            max_replicas=2,
            default_replica_throughput=round(kit.capacity, 1),
            smoothing_half_life_s=2.0,
            scale_down_stabilization_s=60.0,
            gpus=0,
            pool=True,
            pool_min_workers=1,
            pool_max_workers=2,
            pool_standby=standby,
            fleet=fleet,
        )
        sizer = PoolSizer(1, 2, scale_down_stabilization_s=settings.scale_down_stabilization_s)
        backend = PoolBackend(fleet, runner, sizer)
        await exits.enter_async_context(AutoscalerService(settings, backend=backend))
        began = time.monotonic()
        while not any(w.ready_latency_s is not None for w in runner.workers()):
            if time.monotonic() - began > timeout_s:
                raise TimeoutError("the first pool worker did not get ready")
            await asyncio.sleep(0.2)
        first = {w.worker_id for w in runner.workers()}
        print(f"  first pool worker ready after {time.monotonic() - began:.1f}s; load {load:.1f}x capacity")
        standing_by: set[str] = set()
        while len(standing_by) < standby:
            if time.monotonic() - began > timeout_s:
                raise TimeoutError("the standby did not stand by")
            await asyncio.sleep(0.2)
            standing_by = {w.worker_id for w in runner.standbys() if "standing by" in _read(w.log_path)}

        generator = await exits.enter_async_context(
            OpenLoop(stack.url, MODEL, kit.inputs, kit.expected, prefix=home.name, timeout_s=60.0)
        )
        rate = load * kit.capacity
        sending = asyncio.create_task(generator.run(lambda _t: rate, timeout_s), name="load")
        try:
            began = time.monotonic()
            added = None
            while added is None and time.monotonic() - began < timeout_s:
                added = next((e for e in runner.events if e.after > e.before and set(e.spawned) - first), None)
                await asyncio.sleep(0.2)
            if added is None:
                return RunResult(None, False, None, None, None, None, None, generator.answered, generator.failed, [])
            (worker_id,) = [w for w in added.spawned if w not in first]
            log_path = home / "workers" / f"{worker_id}.log"
            found = Milestones()

            def first_answer() -> float | None:
                walls = [o.answered_wall for o in generator.outcomes if o.worker == worker_id and o.correct]
                return min(walls) if walls else None

            while (found.consuming is None or first_answer() is None) and time.monotonic() - began < timeout_s:
                await asyncio.sleep(0.5)
                found = parse_pool_log(log_path.read_text()) if log_path.exists() else found
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        spawned_at = runner.spawned_at.get(worker_id)
        return RunResult(
            worker_id,
            worker_id in standing_by,
            since(spawned_at, added.wall),
            since(found.ready, added.wall),
            since(found.assigned, added.wall),
            since(found.consuming, added.wall),
            since(first_answer(), added.wall),
            generator.answered,
            generator.failed,
            sorted({o.error for o in generator.outcomes if o.error})[:3],
        )


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def run(runs: int, load: float, timeout_s: float, standby: int, baseline: bool) -> dict[str, Any]:
    """``runs`` fresh runs with ``standby`` (and, with ``baseline``, as many without one first); their results
    and the medians."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pool-scale-") as tmp:
        kit = build_model(Path(tmp))
        print(f"model {MODEL}: one worker thread completes {kit.capacity:.1f} requests/s")
        result.update(capacity=kit.capacity, load=load, standby=standby)
        for name, count in (("baseline", 0), ("current", standby)) if baseline else (("current", standby),):
            results = []
            for i in range(runs):
                print(f"{name} (standby {count}): run {i + 1}/{runs}")
                one = await one_run(kit, Path(tmp) / f"{name}{i}", load, timeout_s, count)
                print(f"  {one}")
                results.append(one)
            figures = {
                field: median([v for r in results if (v := getattr(r, field)) is not None])
                for field in ("spawned_s", "ready_s", "assigned_s", "consuming_s", "answered_s")
            }
            runs_median = {"runs": [asdict(r) for r in results], "median": figures}
            if name == "current":
                result.update(runs_median)
            else:
                result["baseline"] = runs_median
    return result


def report(result: dict[str, Any]) -> str:
    """The figures as text, with the target."""
    lines = ["seconds from the autoscaler's decision to add a pool worker (median of runs; upper bounds):"]
    base = result.get("baseline", {}).get("median")
    if base is not None:
        lines.append(f"  {'':<10} {'standby ' + str(result['standby']):>10} {'none':>8}")
    for name, value in result["median"].items():
        text = "-" if value is None else f"{value:.2f}"
        if base is not None:
            other = base.get(name)
            text = f"{text:>10} {'-' if other is None else f'{other:.2f}':>8}"
        lines.append(f"  {name.removesuffix('_s'):<10} {text}")
    consuming = [r["consuming_s"] for r in result["runs"]]
    ok = bool(consuming) and all(c is not None and c <= TARGET_S for c in consuming)
    each = ", ".join("-" if c is None else f"{c:.2f}" for c in consuming)
    lines.append(f"consuming within {TARGET_S:.0f} s of the decision: {'PASS' if ok else 'MISS'} (runs: {each})")
    return "\n".join(lines)


def main() -> None:
    """``python -m bench.pool_scale``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="fresh stacks, one added worker each (default 3)")
    parser.add_argument("--load", type=float, default=1.6, help="offered load x one worker's capacity (1.6)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a run may wait for each step (60)")
    parser.add_argument("--standby", type=int, default=1, help="standbys the local pool runner keeps (1)")
    parser.add_argument("--baseline", action="store_true", help="first as many runs without a standby")
    parser.add_argument("--json", type=Path, help="write the runs and medians here")
    args = parser.parse_args()
    result = asyncio.run(run(args.runs, args.load, args.timeout, args.standby, args.baseline))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
