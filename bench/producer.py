"""Direct-Kafka producer benchmark (issue 3): requests/s submitted and answered end to end.

Starts the embedded stack without a gateway (local broker + Redis + ``--workers`` worker processes),
registers the tiny MLP (16 -> 4) with a large dynamic batch, then a :class:`fleet.client.producer.FleetProducer`
in this process keeps ``--window`` requests (one row each) in flight for ``--duration`` seconds: every
request is its own Kafka record, workers batch them, replies come back through the client's reply
stream. Prints answered requests/s, latency percentiles, errors, the workers' mean batch and CPU use.

    .venv/bin/python -m bench.producer [--duration 10] [--workers 2] [--window 4096]
                                       [--json bench/results/producer.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, write_report
from bench.loadgen import cpu_seconds
from fleet.client.producer import FleetProducer
from fleet.demo.modelgen import tiny_mlp
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, FleetSettings, ModelRegistry, Names
from schemas.topics import ensure_model_topics

MODEL = "tiny"


async def register_tiny(settings: FleetSettings, directory: Path, max_batch: int, delay_ms: float, parts: int) -> str:
    """Register the tiny MLP (version 1) with its topics; returns the artifact path."""
    path = tiny_mlp(directory / "tiny.onnx")
    redis = settings.redis.client()
    try:
        names = Names(settings.namespace)
        record = build_record(MODEL, "1", path, batching=BatchingConfig(max_batch, delay_ms))
        await ModelRegistry(redis, names).register(record)
        await ensure_model_topics(settings.kafka, names, MODEL, parts)
    finally:
        await redis.aclose()
    return str(path)


def stack_env(workers_fetch: int) -> dict[str, str]:
    """Environment of the stack's processes for throughput runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(FLEET_WORKER_INTRA_OP_THREADS="1", FLEET_WORKER_MAX_FETCH_RECORDS=str(workers_fetch))
    return env


def process_cpu(stack: LocalStack) -> dict[str, float]:
    """CPU seconds used so far by each process of the stack and by this one."""
    pids = {p.name: p.pid for p in stack.info().processes} | {"client": os.getpid()}
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


async def closed_loop(producer: FleetProducer, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Submit continuously (the producer's window is the bound) and count answers inside the window."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((4096, 16)).astype(np.float32)
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    queued: list[float] = []
    counts = {"answered": 0, "errors": 0, "submitted": 0}
    errors: list[str] = []
    began = time.perf_counter()
    measure_from = began + warmup_s
    stop_at = measure_from + duration_s
    done = asyncio.Event()

    async def submit() -> None:
        i = 0
        while time.perf_counter() < stop_at:
            request_id = await producer.submit(MODEL, {"x": rows[i % 4096 : i % 4096 + 1]})
            sent_at[request_id] = time.perf_counter()
            i += 1
        counts["submitted"] = i
        done.set()

    async def receive() -> None:
        async for result in producer.results():
            now = time.perf_counter()
            started = sent_at.pop(result.request_id, now)
            if measure_from <= now < stop_at:
                counts["answered"] += 1
                latencies.append(now - started)
                queued.append(result.queue_ms)
                if not result.ok:
                    counts["errors"] += 1
                    if len(errors) < 3 and result.error is not None:
                        errors.append(f"{result.error.code}: {result.error.message}")
            if done.is_set() and producer.in_flight == 0:
                return

    await asyncio.gather(submit(), receive())
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "answered_per_s": round(counts["answered"] / duration_s),
        "answered": counts["answered"],
        "errors": counts["errors"],
        "error_samples": errors,
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "mean_queue_ms": round(float(np.mean(queued)), 1) if queued else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement on a fresh stack."""
    home = Path(tempfile.mkdtemp(prefix="fleet-bench-producer-"))
    config = StackConfig(home=home, gateway=False, workers=args.workers, models=(), env=stack_env(args.fetch))
    async with LocalStack(config) as stack:
        await register_tiny(stack.settings, home, args.max_batch, args.delay_ms, args.partitions)
        await stack.restart_workers([MODEL])
        async with FleetProducer(stack.settings, max_in_flight=args.window, linger_ms=args.linger_ms) as producer:
            await producer.infer(MODEL, {"x": np.zeros((1, 16), np.float32)})  # warm path
            before = process_cpu(stack)
            began = time.perf_counter()
            figures = await closed_loop(producer, args.duration, args.warmup)
            elapsed = time.perf_counter() - began
            used = process_cpu(stack)
        cpu = {name: round(100 * (used[name] - before.get(name, 0.0)) / elapsed) for name in used}
        batches = await _mean_batch(stack)
    return figures | {"cpu_percent": cpu, "mean_batch": batches}


async def _mean_batch(stack: LocalStack) -> float | None:
    """Mean batch size from the workers' service stats, when they publish them."""
    redis = stack.settings.redis.client()
    try:
        names = Names(stack.settings.namespace)
        ids = await redis.zrange(names.stats_index_key(MODEL), 0, -1)
        values = []
        for worker in ids:
            raw = await redis.hget(names.stats_key(MODEL, worker.decode()), "batch")
            if raw is not None:
                values.append(float(raw))
    finally:
        await redis.aclose()
    return round(sum(values) / len(values), 1) if values else None


def add_loop_options(parser: argparse.ArgumentParser) -> None:
    """The options of `run` (also taken by ``bench.batch_pipeline``, which runs the same loop first)."""
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the direct-producer loop")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring it")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the model's topic")
    parser.add_argument("--window", type=int, default=4096, help="requests in flight (max_in_flight)")
    parser.add_argument("--linger-ms", type=int, default=5, help="producer linger")
    parser.add_argument("--max-batch", type=int, default=256, help="the model's max batch size")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="the model's max queue delay")
    parser.add_argument("--fetch", type=int, default=1024, help="FLEET_WORKER_MAX_FETCH_RECORDS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loop_options(parser)
    parser.add_argument("--json", default="bench/results/producer.json", help="where to write the figures")
    args = parser.parse_args()
    load = list(os.getloadavg())
    figures = asyncio.run(run(args))
    report = {
        "benchmark": "producer",
        "machine": machine(),
        "load_average_at_start": load,  # other work on the same cores lowers every figure
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        **figures,
    }
    print(
        f"direct producer: {figures['answered_per_s']:,} requests/s answered end to end "
        f"(p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, errors {figures['errors']}, "
        f"mean batch {figures['mean_batch']}, mean queue {figures['mean_queue_ms']} ms)"
    )
    print("CPU % of one core: " + ", ".join(f"{k} {v}" for k, v in figures["cpu_percent"].items()))
    write_report(args.json, report)


if __name__ == "__main__":
    main()
