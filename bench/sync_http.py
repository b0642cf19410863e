"""Sync HTTP benchmark (issue 2): closed-loop load at several concurrencies through the whole path.

Starts the embedded stack (local broker + Redis + 1 gateway + 1 worker), registers a tiny MLP and a
compute-heavy MLP, then for each model and concurrency prints req/s, p50/p90/p99 latency, errors and
the mean batch size the worker formed; also the model's in-process ONNX Runtime throughput (the
ceiling) and the worker's CPU use at idle. Writes everything as JSON. ``cpu_ms_per_request``: CPU
milliseconds all fleet processes (broker, Redis, gateway, worker and their children; not the load
generator) spent per answered request; ``gateway_cpu_ms_per_request`` (and one per role, ``loadgen`` included) that
of one role.

    .venv/bin/python -m bench.sync_http [--duration 10] [--concurrency 1,16,64] [--soak 4] [--body json]
                                        [--worker-mode pool] [--client lean|aiohttp]
                                        [--json bench/results/sync_http.json]

It also runs against an older commit's fleet (``bench.compare`` puts this bench package in front of that
commit's tree), so it imports the stack from where the commit has it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import git_commit, machine, write_report
from bench.cpu_model import FEATURES as CONV_FEATURES
from bench.cpu_model import conv_net
from bench.loadgen import closed_loop, cpu_seconds, ort_ceiling
from bench.procfs import descendants
from gateway.settings import GatewaySettings
from schemas import BatchingConfig, ModelRegistry, Names
from schemas.topics import ensure_model_topics

try:
    from fleet.demo.modelgen import heavy_mlp, tiny_mlp
    from fleet.local.stack import LocalStack, StackConfig
    from fleet.models.artifacts import build_record
except ImportError:  # a tree from before fleet's subpackages (a baseline of bench.compare)
    from fleet.artifacts import build_record  # type: ignore[no-redef]
    from fleet.modelgen import heavy_mlp, tiny_mlp  # type: ignore[no-redef]
    from fleet.stack import LocalStack, StackConfig  # type: ignore[no-redef]

MODELS = {
    # name: (builder, input features, max batch size, max queue delay ms)
    "tiny": (tiny_mlp, 16, 64, 2.0),
    "heavy": (heavy_mlp, 256, 32, 2.0),
    # CPU-bound: several ms per sample on one thread (not in the default --models: its ceiling is ~100 rows/s)
    "conv": (conv_net, CONV_FEATURES, 16, 2.0),
}


async def _register(stack: LocalStack, directory: Path) -> dict[str, str]:
    paths: dict[str, str] = {}
    redis = stack.settings.redis.client()
    try:
        registry = ModelRegistry(redis, Names(stack.config.namespace))
        for name, (builder, _, max_batch, delay) in MODELS.items():
            path = builder(directory / f"{name}.onnx")
            paths[name] = str(path)
            record = build_record(name, "1", path, batching=BatchingConfig(max_batch, delay))
            await registry.register(record)
            await ensure_model_topics(stack.settings.kafka, Names(stack.config.namespace), name)
    finally:
        await redis.aclose()
    return paths


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _worker_pid(stack: LocalStack) -> int:
    return next(p.pid for p in stack.info().processes if p.role == "worker")


async def _idle_cpu(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - before) / seconds


def _role_cpu(roles: dict[int, str]) -> dict[str, float]:
    """CPU seconds of each role's process and its children (a gateway's decode processes)."""
    used = dict.fromkeys(roles.values(), 0.0)
    for pid, root in descendants(roles).items():
        used[roles[root]] += cpu_seconds(pid)
    return used


async def _measure(
    stack: LocalStack, model: str, concurrency: int, duration_s: float, json_bodies: bool, http_client: str = "lean"
) -> dict[str, Any]:
    features = MODELS[model][1]
    roles = {p.pid: p.role for p in stack.info().processes}
    loadgen = os.getpid()
    before, before_loadgen = _role_cpu(roles), cpu_seconds(loadgen)
    result = await closed_loop(
        stack.url, model, "x", features, concurrency, duration_s, json_bodies=json_bodies, http_client=http_client
    )
    after = _role_cpu(roles)
    used = {role: after[role] - before[role] for role in after} | {"loadgen": cpu_seconds(loadgen) - before_loadgen}
    cpu = {role: round(100 * seconds / result.seconds) for role, seconds in used.items()}
    fleet_s = sum(seconds for role, seconds in used.items() if role != "loadgen")
    cpu_ms = round(1000 * fleet_s / result.requests, 3) if result.requests else None
    print(result.line(), flush=True)
    print(
        f"{'':>13}CPU % of one core: " + ", ".join(f"{k} {v}" for k, v in cpu.items()) + f"; fleet {cpu_ms} ms/request",
        flush=True,
    )
    by_role = {
        f"{role}_cpu_ms_per_request": round(1000 * seconds / result.requests, 3) if result.requests else None
        for role, seconds in used.items()
    }
    return result.as_dict() | {"cpu_percent": cpu, "cpu_ms_per_request": cpu_ms} | by_role


async def run(
    duration_s: float,
    concurrencies: list[int],
    idle_s: float,
    soak_windows: int,
    models: list[str],
    json_bodies: bool = False,
    worker_mode: str | None = None,
    http_client: str = "lean",
) -> dict[str, Any]:
    """Each (model, concurrency) point runs on a fresh stack: the embedded broker keeps its whole log
    in memory and gets slower as it grows (see ``--soak``), which a real Kafka cluster does not."""
    env = dict(os.environ)
    env.setdefault("FLEET_WORKER_INTRA_OP_THREADS", "1")
    if worker_mode:
        env["FLEET_WORKER_MODE"] = worker_mode
    if "grpc_port" in {f.name for f in dataclasses.fields(GatewaySettings)}:  # a tree with the gRPC server
        env.setdefault("FLEET_GATEWAY_GRPC_PORT", str(_free_port()))  # not 8001: other stacks may run
    report: dict[str, Any] = {
        "benchmark": "sync_http",
        "commit": git_commit(),
        "machine": machine(),
        "duration_s": duration_s,
        "body": "json" if json_bodies else "binary",
        "worker_mode": env.get("FLEET_WORKER_MODE", "models"),
        "http_client": http_client,
        "runs": [],
        "soak": [],
        "ceiling_rows_per_s": {},
    }
    for model in models:
        _, features, max_batch, _ = MODELS[model]
        for index, concurrency in enumerate(concurrencies):
            home = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
            async with LocalStack(StackConfig(home=home, workers=1, models=(), env=env)) as stack:
                paths = await _register(stack, home)
                await stack.restart_workers([model])
                if model == "tiny" and index == 0 and idle_s > 0:
                    await asyncio.sleep(2.0)  # let start-up settle before measuring idle CPU
                    idle = round(await _idle_cpu(_worker_pid(stack), idle_s), 2)
                    report["worker_idle_cpu_percent"] = idle
                    print(f"worker idle CPU: {idle:.2f} % of one core over {idle_s:.0f} s", flush=True)
                report["runs"].append(await _measure(stack, model, concurrency, duration_s, json_bodies, http_client))
        ceiling = await asyncio.to_thread(ort_ceiling, paths[model], "x", features, max_batch)
        report["ceiling_rows_per_s"][model] = round(ceiling)
        print(f"{model:>8} in-process ONNX Runtime, batch {max_batch}, 1 thread: {ceiling:,.0f} rows/s", flush=True)
    if soak_windows:
        print(f"soak: tiny, concurrency {max(concurrencies)}, {soak_windows} windows on one stack", flush=True)
        home = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
        async with LocalStack(StackConfig(home=home, workers=1, models=(), env=env)) as stack:
            await _register(stack, home)
            await stack.restart_workers(["tiny"])
            for _ in range(soak_windows):
                report["soak"].append(
                    await _measure(stack, "tiny", max(concurrencies), duration_s, json_bodies, http_client)
                )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per concurrency level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle worker CPU measured (0: none)")
    parser.add_argument("--models", default="tiny,heavy", help=f"comma-separated subset of {sorted(MODELS)}")
    parser.add_argument("--soak", type=int, default=0, help="extra windows at top concurrency on one stack")
    parser.add_argument("--body", choices=("binary", "json"), default="binary", help="tensors in the body")
    parser.add_argument("--json", default="bench/results/sync_http.json", help="where to write the figures")
    parser.add_argument(
        "--worker-mode",
        choices=("models", "pool"),
        default=None,
        help="the worker's FLEET_WORKER_MODE (default: the environment's, else the worker's own default)",
    )
    parser.add_argument(
        "--client",
        choices=("lean", "aiohttp"),
        default="lean",
        help="the load generator's HTTP client (bench.loadgen.closed_loop's http_client)",
    )
    args = parser.parse_args()
    began = time.perf_counter()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    models = args.models.split(",")
    report = asyncio.run(
        run(
            args.duration,
            concurrencies,
            args.idle,
            args.soak,
            models,
            args.body == "json",
            args.worker_mode,
            args.client,
        )
    )
    report["wall_s"] = round(time.perf_counter() - began, 1)
    write_report(args.json, report)


if __name__ == "__main__":
    main()
