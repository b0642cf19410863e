"""Async-jobs-over-HTTP benchmark (issue 3): submit rate, completion rate, time to done.

Starts the embedded stack (local broker + Redis + 1 gateway + 1 worker), registers the tiny MLP
(16 -> 4), then ``--concurrency`` clients submit ``--jobs`` async jobs (one row each, binary tensors,
``?async=true``) as fast as the gateway answers 202; a poller sweeps ``GET /v2/jobs/{id}`` over the
jobs not finished yet (``--poll-ms`` between sweeps) until all are. Prints the submit rate and
latency, the time until the last job is done, end-to-end jobs/s, and the statuses seen (every job
must end ``done``). A second run repeats it with an ``Idempotency-Key`` on every submit.

    .venv/bin/python -m bench.async_jobs [--jobs 3000] [--concurrency 32] [--poll-ms 50]
                                         [--json bench/results/async_jobs.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import git_commit, machine, write_report
from bench.loadgen import cpu_seconds
from fleet.client import FleetClient
from fleet.demo.modelgen import tiny_mlp
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, JobStatus, ModelRegistry, Names
from schemas.topics import ensure_model_topics

MODEL = "tiny"


async def _register(stack: LocalStack, directory: Path) -> None:
    redis = stack.settings.redis.client()
    try:
        names = Names(stack.config.namespace)
        record = build_record(MODEL, "1", tiny_mlp(directory / "tiny.onnx"), batching=BatchingConfig(64, 2.0))
        await ModelRegistry(redis, names).register(record)
        await ensure_model_topics(stack.settings.kafka, names, MODEL)
    finally:
        await redis.aclose()


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else 0.0


async def _run_once(url: str, jobs: int, concurrency: int, poll_s: float, idempotent: bool) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(64)]
    submitted: dict[str, float] = {}
    submit_ms: list[float] = []
    errors: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    done_ms: list[float] = []
    async with FleetClient(url, timeout_s=30, max_connections=concurrency + 8) as client:
        counter = iter(range(jobs))
        began = time.perf_counter()

        async def submitter() -> None:
            for i in counter:
                key = f"bench-{i}" if idempotent else None
                start = time.perf_counter()
                try:
                    job_id = await client.submit(MODEL, {"x": inputs[i % len(inputs)]}, idempotency_key=key)
                except Exception as exc:  # counted and reported
                    errors[type(exc).__name__] += 1
                    continue
                now = time.perf_counter()
                submit_ms.append((now - start) * 1000)
                submitted[job_id] = now

        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        submit_s = time.perf_counter() - began
        pending = set(submitted)
        sweeps = 0
        gate = asyncio.Semaphore(concurrency)

        async def check(job_id: str) -> None:
            async with gate:
                job = await client.job(job_id)
            if job.finished:
                statuses[job.status.value] += 1
                done_ms.append((time.perf_counter() - submitted[job_id]) * 1000)
                pending.discard(job_id)

        while pending:
            sweeps += 1
            await asyncio.gather(*(check(j) for j in list(pending)))
            if pending:
                await asyncio.sleep(poll_s)
        total_s = time.perf_counter() - began
    return {
        "idempotency_key": idempotent,
        "jobs": jobs,
        "concurrency": concurrency,
        "submit_errors": dict(errors),
        "submit_per_s": round(len(submitted) / submit_s),
        "submit_p50_ms": round(_percentile(submit_ms, 50), 2),
        "submit_p99_ms": round(_percentile(submit_ms, 99), 2),
        "all_done_s": round(total_s, 2),
        "end_to_end_jobs_per_s": round(len(submitted) / total_s),
        "statuses": dict(statuses),
        "poll_sweeps": sweeps,
        "done_seen_p50_ms": round(_percentile(done_ms, 50), 1),
        "done_seen_p99_ms": round(_percentile(done_ms, 99), 1),
    }


async def run(jobs: int, concurrency: int, poll_s: float) -> dict[str, Any]:
    """One fresh stack per run (the embedded broker slows down as its in-memory log grows)."""
    env = dict(os.environ)
    env.setdefault("FLEET_WORKER_INTRA_OP_THREADS", "1")
    commit = git_commit()
    report: dict[str, Any] = {
        "benchmark": "async_jobs",
        "commit": commit,
        "machine": machine(),
        "runs": [],
    }
    for idempotent in (False, True):
        home = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
        async with LocalStack(StackConfig(home=home, workers=1, models=(), env=env)) as stack:
            await _register(stack, home)
            await stack.restart_workers([MODEL])
            pids = {p.role: p.pid for p in stack.info().processes} | {"bench": os.getpid()}
            before = {role: cpu_seconds(pid) for role, pid in pids.items()}
            began = time.perf_counter()
            result = await _run_once(stack.url, jobs, concurrency, poll_s, idempotent)
            elapsed = time.perf_counter() - began
            result["cpu_percent"] = {
                role: round(100 * (cpu_seconds(pid) - before[role]) / elapsed) for role, pid in pids.items()
            }
        report["runs"].append(result)
        print(
            f"async jobs{' + Idempotency-Key' if idempotent else ''}: {result['jobs']} jobs, "
            f"{result['concurrency']} submitters: submit {result['submit_per_s']}/s "
            f"(p50 {result['submit_p50_ms']} ms, p99 {result['submit_p99_ms']} ms), all done in "
            f"{result['all_done_s']} s = {result['end_to_end_jobs_per_s']} jobs/s end to end; statuses "
            f"{result['statuses']}; submit errors {result['submit_errors'] or 0}; "
            f"done seen p50 {result['done_seen_p50_ms']} ms after submit ({result['poll_sweeps']} sweeps)",
            flush=True,
        )
        print(f"{'':>11}CPU % of one core: " + ", ".join(f"{k} {v}" for k, v in result["cpu_percent"].items()))
        ok = result["statuses"] == {JobStatus.DONE.value: jobs} and not result["submit_errors"]
        print(f"{'':>11}{'OK' if ok else 'NOT OK'}: every job submitted once and done", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000, help="jobs submitted per run")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent submitters (and pollers)")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="pause between two polling sweeps")
    parser.add_argument("--json", default="bench/results/async_jobs.json", help="where to write the figures")
    args = parser.parse_args()
    report = asyncio.run(run(args.jobs, args.concurrency, args.poll_ms / 1000))
    write_report(args.json, report)


if __name__ == "__main__":
    main()
