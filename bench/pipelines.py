"""Latency of a three-step pipeline (pre -> model -> post, each a small ONNX MLP) served over Kafka between the
steps, against a client calling the three models one after another, at concurrency 1 and 64.

One fresh embedded stack (one worker serving the three models); both ways are measured on it, alternating,
for ``--duration`` seconds each. Prints req/s and p50/p99 per way and the pipeline/chain ratio of p50::

    python -m bench.pipelines [--duration 10] [--concurrency 1 64]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fleet.client import FleetClient
from fleet.demo.modelgen import mlp_onnx, random_mlp
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, ModelRegistry, Names
from schemas.pipelines import PipelineStore, check_pipeline, parse_pipeline, step_records
from schemas.topics import ensure_model_topics

LAYERS = {"pre": [16, 16, 16], "model": [16, 32, 4], "post": [4, 8, 4]}
PIPELINE = {
    "name": "bench3",
    "steps": [
        {"name": "pre", "model": "pre", "inputs": {"x": "inputs.x"}},
        {"name": "model", "model": "model", "inputs": {"x": "pre.y"}},
        {"name": "post", "model": "post", "inputs": {"x": "model.y"}},
    ],
    "outputs": {"y": "post.y"},
}


async def _setup(stack: LocalStack, home: Path) -> None:
    names = Names(stack.config.namespace)
    redis = stack.settings.redis.client()
    try:
        registry = ModelRegistry(redis, names)
        for name, layers in LAYERS.items():
            path = mlp_onnx(home / f"{name}.onnx", random_mlp(layers, 1))
            await registry.register(build_record(name, "1", path, batching=BatchingConfig(32, 2)))
            await ensure_model_topics(stack.settings.kafka, names, name)
        plan = parse_pipeline(PIPELINE)
        check_pipeline(plan, await step_records(plan, registry.get))
        await PipelineStore(redis, names).apply(plan)
    finally:
        await redis.aclose()


async def _loop(url: str, concurrency: int, duration_s: float, pipeline: bool) -> dict[str, Any]:
    latencies: list[float] = []
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    async with FleetClient(url, timeout_s=30) as client:

        async def once() -> None:
            if pipeline:
                await client.infer("bench3", {"x": x}, pipeline=True)
                return
            y = x
            for model in ("pre", "model", "post"):
                y = (await client.infer(model, {"x": y})).outputs["y"]

        async def worker(stop_at: float, measure: bool) -> None:
            while time.perf_counter() < stop_at:
                began = time.perf_counter()
                await once()
                if measure:
                    latencies.append(time.perf_counter() - began)

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(warm, False) for _ in range(concurrency)))
        began = time.perf_counter()
        await asyncio.gather(*(worker(began + duration_s, True) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    p50, p99 = (float(np.percentile(ms, q)) for q in (50, 99))
    return {"req_per_s": len(ms) / seconds, "p50_ms": p50, "p99_ms": p99}


async def main(duration_s: float, concurrencies: list[int]) -> None:
    home = Path(tempfile.mkdtemp(prefix="fleet-bench-pipes-"))
    async with LocalStack(StackConfig(home=home, workers=1, models=())) as stack:
        await _setup(stack, home)
        await stack.restart_workers(list(LAYERS))
        for i, concurrency in enumerate(concurrencies):
            results: dict[str, dict[str, Any]] = {}
            for way in (("pipeline", "chain") if i % 2 == 0 else ("chain", "pipeline")):
                results[way] = await _loop(stack.url, concurrency, duration_s, way == "pipeline")
            p, c = results["pipeline"], results["chain"]
            print(
                f"c={concurrency:<3} pipeline {p['req_per_s']:7.1f} req/s p50 {p['p50_ms']:7.2f} "
                f"p99 {p['p99_ms']:7.2f} ms"
                f" | chain of 3 calls {c['req_per_s']:7.1f} req/s p50 {c['p50_ms']:7.2f} p99 {c['p99_ms']:7.2f} ms"
                f" | p50 pipeline/chain {p['p50_ms'] / c['p50_ms']:4.2f}",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    options = parser.parse_args()
    asyncio.run(main(options.duration, options.concurrency))
