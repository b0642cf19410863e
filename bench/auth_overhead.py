"""What API keys and rate limits cost on the sync path (issue 6): same load, four gateway configurations.

Starts the local broker and Redis, registers the tiny MLP, starts one worker (``python -m workers``),
then for each configuration a fresh gateway (``python -m gateway``) and a closed loop of sync requests
(binary tensors, one row) at ``--concurrency`` for ``--duration`` s:

- ``open``: auth off, no limits (the baseline);
- ``auth``: auth on, every request carries a valid key (cached after the first lookup);
- ``auth+limits``: the key has a rate and the model one too (never reached): one script call per request;
- ``model-limit``: auth off, a per-model limit only.

Prints req/s and p50/p99 of the load, then the gateway's Redis commands per request for auth and limits
(``HGETALL``: key lookups; ``EVALSHA``: the buckets), counted with ``INFO commandstats`` over 500
requests that stop with 400 before publishing (so the worker adds none), and the p50/p99 latency of those
sequential requests (the guard's cost with less noise than the loaded throughput); writes JSON.
Take the bench lock first (shared machines):

    exec 9>/tmp/bench.lock; flock 9; .venv/bin/python -m bench.auth_overhead [--duration 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.common import write_report
from bench.loadgen import closed_loop
from fleet.demo.modelgen import tiny_mlp
from fleet.local.servers import LocalBroker, LocalRedis, free_port
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, ModelRegistry, Names, RedisSettings
from schemas.apikeys import ApiKeyStore
from schemas.settings import KafkaSettings
from schemas.topics import ensure_model_topics

MODEL = "tiny"
NAMESPACE = "bench-auth"


def _env(bootstrap: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(FLEET_NAMESPACE=NAMESPACE, FLEET_KAFKA_BOOTSTRAP=bootstrap, FLEET_REDIS_URL=redis_url, **extra)
    return env


def _spawn(module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(30)


async def _wait(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


async def _commands(redis: Any) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("hgetall", "evalsha", "eval")}


async def _calls_per_request(redis: Any, url: str, headers: dict[str, str] | None, count: int) -> dict[str, float]:
    """Redis commands per request of the gateway alone, and the latency of that short path: ``count``
    sequential infer requests with an empty body pass auth and the limits, then get 400 before anything
    is published (so no worker runs a script)."""
    before = await _commands(redis)
    took: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for _ in range(count):
            started = time.perf_counter()
            async with http.post(f"{url}/v2/models/{MODEL}/infer", data=b"") as resp:
                if resp.status != 400:
                    raise RuntimeError(f"expected 400 for an empty body, got {resp.status}: {await resp.text()}")
                await resp.read()
            took.append(time.perf_counter() - started)
    after = await _commands(redis)
    calls = {name: round((after[name] - before[name]) / count, 4) for name in after}
    ms = np.array(took) * 1000.0
    return {**calls, "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


async def run(duration_s: float, concurrency: int, reverse: bool = False) -> dict[str, Any]:
    broker, server = LocalBroker(), LocalRedis()
    await asyncio.gather(asyncio.to_thread(broker.start), asyncio.to_thread(server.start))
    redis = RedisSettings(url=server.url).client()
    names = Names(NAMESPACE)
    worker: subprocess.Popen[bytes] | None = None
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            record = build_record(
                MODEL, "1", tiny_mlp(Path(tmp) / "tiny.onnx"), batching=BatchingConfig(max_batch_size=32)
            )
            await ModelRegistry(redis, names).register(record)
            await ensure_model_topics(KafkaSettings(bootstrap=broker.bootstrap), names, MODEL, partitions=1)
            store = ApiKeyStore(redis, names)
            _, plain = await store.create("bench")
            _, limited = await store.create("bench-limited", rate=1e6)
            worker_env = _env(broker.bootstrap, server.url, FLEET_WORKER_MODELS=MODEL, FLEET_WORKER_DEVICE="cpu")
            worker = _spawn("workers", worker_env)
            model_limit = {"FLEET_GATEWAY_MODEL_RATE_LIMITS": f"{MODEL}=1e6"}  # never reached
            configs: list[tuple[str, dict[str, str], str | None]] = [
                ("open", {}, None),
                ("auth", {"FLEET_GATEWAY_AUTH": "true"}, plain),
                ("auth+limits", {"FLEET_GATEWAY_AUTH": "true", **model_limit}, limited),
                ("model-limit", model_limit, None),
            ]
            for label, extra, secret in reversed(configs) if reverse else configs:
                port = free_port()
                gateway = _spawn(
                    "gateway",
                    _env(
                        broker.bootstrap,
                        server.url,
                        FLEET_GATEWAY_PORT=str(port),
                        FLEET_GATEWAY_GRPC_PORT=str(free_port()),
                        **extra,
                    ),
                )
                url = f"http://127.0.0.1:{port}"
                try:
                    await _wait(url + "/v2/health/ready")
                    headers = {"Authorization": f"Bearer {secret}"} if secret else None
                    load = await closed_loop(
                        url, MODEL, "x", 16, concurrency, duration_s, warmup_s=2.0, headers=headers
                    )
                    calls = await _calls_per_request(redis, url, headers, 500)
                finally:
                    await asyncio.to_thread(_stop, gateway)
                row = {
                    "config": label,
                    **load.as_dict(),
                    "hgetall_per_request": calls["hgetall"],
                    "evalsha_per_request": calls["evalsha"] + calls["eval"],
                    "guard_path_p50_ms": calls["p50_ms"],
                    "guard_path_p99_ms": calls["p99_ms"],
                }
                results.append(row)
                print(
                    f"{label:<12} {load.req_per_s:8.0f} req/s  p50 {load.p50_ms:6.2f} ms  p99 {load.p99_ms:6.2f} ms  "
                    f"errors {load.errors}  HGETALL/req {row['hgetall_per_request']}  "
                    f"EVALSHA/req {row['evalsha_per_request']}  "
                    f"sequential 400 path p50 {calls['p50_ms']:.3f} ms p99 {calls['p99_ms']:.3f} ms",
                    flush=True,
                )
    finally:
        if worker is not None:
            await asyncio.to_thread(_stop, worker)
        await redis.aclose()
        await asyncio.gather(asyncio.to_thread(broker.stop), asyncio.to_thread(server.stop))
    return {
        "duration_s": duration_s,
        "concurrency": concurrency,
        "order": "reversed" if reverse else "listed",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per configuration")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--reverse", action="store_true", help="run the configurations in reverse order")
    parser.add_argument("--json", default="bench/results/auth_overhead.json", help="where to write the figures")
    args = parser.parse_args()
    report = asyncio.run(run(args.duration, args.concurrency, args.reverse))
    write_report(args.json, report)


if __name__ == "__main__":
    main()
