"""Lanes benchmark (issue 3): sync p99 at concurrency 1, idle and while a bulk flood runs at full speed.

Starts the embedded stack (local broker + Redis + 1 gateway + 1 worker), registers the tiny MLP, then:

1. idle: closed-loop sync HTTP at concurrency 1 for ``--duration`` s (binary tensors, one row);
2. flood: a separate process (``python -m bench.lanes flood ...``, like a batch pipeline would be)
   publishes bulk requests straight to the model's **bulk** topic with aiokafka and the shared
   envelopes, ``--window`` in flight, replies to its own Redis stream, a new one for each answer:
   the worker's whole spare capacity goes to bulk. The same sync load runs again meanwhile;
3. baseline (``--baseline``): the same flood sent to the **interactive** topic instead, to show what
   the lanes buy.

Prints p50/p99 and the ratio flood/idle (target: p99 ratio <= 2), the flood's answered requests/s and
the CPU use of each process; writes JSON. Take the bench lock first (shared machines):

    exec 9>/tmp/bench.lock; flock 9; .venv/bin/python -m bench.lanes [--duration 15] [--baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

from bench.common import git_commit, machine, write_report
from bench.loadgen import closed_loop, cpu_seconds
from fleet.demo.modelgen import tiny_mlp
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import (
    BatchingConfig,
    FleetSettings,
    InferenceRequest,
    InferenceResponse,
    KafkaSettings,
    Lane,
    ModelRegistry,
    Names,
    RedisSettings,
    ReplyAddress,
    ReplyKind,
    Tensor,
)
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.topics import ensure_model_topics

MODEL = "tiny"
FEATURES = 16


# the flood (child process) ---------------------------------------------------------------------------
async def flood(settings: FleetSettings, lane: Lane, window: int, status: Path) -> None:
    """Keep ``window`` requests in flight on ``lane`` until SIGTERM; write the answered count to ``status``."""
    names = Names(settings.namespace)
    topic = names.request_topic(MODEL, lane)
    stream = names.reply_stream(f"flood-{os.getpid()}")
    rng = np.random.default_rng(1)
    inputs = [Tensor.from_numpy("x", rng.standard_normal((1, FEATURES)).astype(np.float32)) for _ in range(64)]
    producer = AIOKafkaProducer(**{**settings.kafka.producer_kwargs(), "linger_ms": 5})
    redis = settings.redis.client()
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    counts = {"answered": 0, "errors": 0, "sent": 0}
    slots = asyncio.Semaphore(window)

    async def send() -> None:
        while not stop.is_set():
            await slots.acquire()
            i = counts["sent"]
            counts["sent"] += 1
            request = InferenceRequest(
                f"f{os.getpid()}-{i}",
                MODEL,
                "1",
                (inputs[i % len(inputs)],),
                reply=ReplyAddress(ReplyKind.STREAM, stream),
            )
            key = request.id.encode()
            headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, b"1")]
            await producer.send(topic, request.to_bytes(), key=key, headers=headers)

    async def receive() -> None:
        last = "$"
        while not stop.is_set():
            result = await redis.xread({stream: last}, count=1000, block=200)
            for _, entries in result or []:
                for entry_id, fields in entries:
                    last = entry_id
                    response = InferenceResponse.from_bytes(fields[b"r"])
                    counts["errors" if response.error else "answered"] += 1
                    slots.release()

    async def report() -> None:
        while not stop.is_set():
            _write_status(status, counts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    tasks = [asyncio.create_task(c()) for c in (receive, send, report)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    _write_status(status, counts)
    await producer.stop()
    await redis.aclose()


def _write_status(path: Path, counts: dict[str, int]) -> None:
    path.write_text(json.dumps({**counts, "t": time.time()}))


# the driver -------------------------------------------------------------------------------------------
def _status(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {"answered": 0, "errors": 0, "sent": 0, "t": time.time()}


async def _sync_point(stack: LocalStack, duration_s: float, extra_pids: dict[str, int]) -> dict[str, Any]:
    pids = {p.name: p.pid for p in stack.info().processes} | {"loadgen": os.getpid()} | extra_pids
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = await closed_loop(stack.url, MODEL, "x", FEATURES, 1, duration_s, warmup_s=2.0)
    cpu = {name: round(100 * (cpu_seconds(pid) - before[name]) / result.seconds) for name, pid in pids.items()}
    return result.as_dict() | {"cpu_percent": cpu}


async def _flood_point(stack: LocalStack, lane: Lane, window: int, duration_s: float, home: Path) -> dict[str, Any]:
    status = home / f"flood-{lane.value}.json"
    settings = stack.settings
    env = {
        **os.environ,
        "FLEET_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "FLEET_REDIS_URL": settings.redis.url,
        "FLEET_NAMESPACE": settings.namespace,
    }
    command = [sys.executable, "-m", "bench.lanes", "flood", "--lane", lane.value, "--window", str(window)]
    child = await asyncio.create_subprocess_exec(*command, "--status", str(status), env=env)
    try:
        await asyncio.sleep(3.0)  # the flood reaches its steady rate
        began = _status(status)
        point = await _sync_point(stack, duration_s, {"flood": child.pid})
        ended = _status(status)
    finally:
        child.send_signal(signal.SIGTERM)
        await asyncio.wait_for(child.wait(), 30)
    seconds = max(1e-9, ended["t"] - began["t"])
    point["flood_lane"] = lane.value
    point["flood_answered_per_s"] = round((ended["answered"] - began["answered"]) / seconds)
    point["flood_errors"] = ended["errors"] - began["errors"]
    return point


def _line(label: str, point: dict[str, Any]) -> str:
    flood = f"  flood {point['flood_answered_per_s']:,} req/s answered" if "flood_answered_per_s" in point else ""
    return (
        f"{label:<22} p50 {point['p50_ms']:6.2f} ms  p99 {point['p99_ms']:6.2f} ms  "
        f"{point['req_per_s']:5.0f} req/s  errors {point['errors']}{flood}\n{'':<22} CPU % of one core: "
        + ", ".join(f"{k} {v}" for k, v in point["cpu_percent"].items())
    )


async def run(
    duration_s: float, window: int, baseline: bool, worker_env: dict[str, str], commit: str
) -> dict[str, Any]:
    """Idle, flood on the bulk lane and (``baseline``) flood on the interactive lane, on one fresh stack each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["FLEET_WORKER_INTRA_OP_THREADS"] = "1"
    env.update(worker_env)
    report: dict[str, Any] = {
        "benchmark": "lanes",
        "commit": commit,
        "machine": machine(),
        "duration_s": duration_s,
        "flood_window": window,
        "worker_env": worker_env,
    }
    phases: list[tuple[str, Lane | None]] = [("idle", None), ("bulk_flood", Lane.BULK)]
    if baseline:
        phases.append(("interactive_flood", Lane.INTERACTIVE))
    for label, lane in phases:
        home = Path(tempfile.mkdtemp(prefix="fleet-bench-lanes-"))
        async with LocalStack(StackConfig(home=home, workers=1, models=(), env=env)) as stack:
            redis = stack.settings.redis.client()
            try:
                names = Names(stack.config.namespace)
                record = build_record(MODEL, "1", tiny_mlp(home / "tiny.onnx"), batching=BatchingConfig(64, 2.0))
                await ModelRegistry(redis, names).register(record)
                await ensure_model_topics(stack.settings.kafka, names, MODEL)
            finally:
                await redis.aclose()
            await stack.restart_workers([MODEL])
            if lane is None:
                point = await _sync_point(stack, duration_s, {})
            else:
                point = await _flood_point(stack, lane, window, duration_s, home)
        report[label] = point
        print(_line(label, point), flush=True)
    idle_p99 = report["idle"]["p99_ms"]
    report["p99_ratio_bulk_flood"] = round(report["bulk_flood"]["p99_ms"] / idle_p99, 2)
    report["p50_ratio_bulk_flood"] = round(report["bulk_flood"]["p50_ms"] / report["idle"]["p50_ms"], 2)
    print(f"sync p99 with a bulk flood / idle: {report['p99_ratio_bulk_flood']:.2f}x (target <= 2x)")
    if baseline:
        report["p99_ratio_interactive_flood"] = round(report["interactive_flood"]["p99_ms"] / idle_p99, 2)
        ratio = report["p99_ratio_interactive_flood"]
        print(f"sync p99 with the same flood on the interactive lane / idle: {ratio:.2f}x")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["run", "flood"], default="run", help="flood: the child process")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of sync load measured per phase")
    parser.add_argument("--window", type=int, default=2000, help="bulk requests the flood keeps in flight")
    parser.add_argument("--baseline", action="store_true", help="also flood the interactive lane, for comparison")
    parser.add_argument("--bulk-max-batch", type=int, default=None, help="FLEET_WORKER_BULK_MAX_BATCH of the worker")
    parser.add_argument("--bulk-share", type=float, default=None, help="FLEET_WORKER_BULK_SHARE of the worker")
    parser.add_argument("--lane", default="bulk", help="flood: the lane to flood")
    parser.add_argument("--status", default="", help="flood: where to write the running counts")
    parser.add_argument("--json", default="bench/results/lanes.json", help="where to write the figures")
    args = parser.parse_args()
    if args.mode == "flood":
        env = os.environ
        settings = FleetSettings(
            namespace=env["FLEET_NAMESPACE"],
            kafka=KafkaSettings(bootstrap=env["FLEET_KAFKA_BOOTSTRAP"]),
            redis=RedisSettings(url=env["FLEET_REDIS_URL"]),
        )
        asyncio.run(flood(settings, Lane.parse(args.lane), args.window, Path(args.status)))
        return
    began = time.perf_counter()
    commit = git_commit()
    worker_env = {}
    if args.bulk_max_batch is not None:
        worker_env["FLEET_WORKER_BULK_MAX_BATCH"] = str(args.bulk_max_batch)
    if args.bulk_share is not None:
        worker_env["FLEET_WORKER_BULK_SHARE"] = str(args.bulk_share)
    report = asyncio.run(run(args.duration, args.window, args.baseline, worker_env, commit))
    report["wall_s"] = round(time.perf_counter() - began, 1)
    write_report(args.json, report)


if __name__ == "__main__":
    main()
