"""Multi-model residency: 20 ONNX models (~10 MB each) on 2 workers whose memory budgets fit 5 models each.

Each worker serves 10 of the models (FLEET_WORKER_MODELS), with a budget of 5.5x the footprint the
bench measures for one model (loaded the way a worker loads it) and an overcommit that allows 10.
Traffic (closed loop, ``--concurrency`` requests in flight) is uniform over the 20 models, then skewed:
80 % on 3 models, the rest uniform over the other 17. Printed: that every model answered, the reload
latency of evicted models from the workers' local disk cache (p50/p90/p99, interpolated in the
workers' ``fleet_worker_model_reload_seconds`` histogram, buckets of 10 ms up to 100 ms), evictions,
disk-cache hits and the residency hit rate (requests whose model was resident) of each phase; and,
for reference, the same reload path timed alone in the bench process before any traffic.
Targets (issue 5): reload p50 <= 100 ms; skewed hit rate >= 90 %.

    python -m bench.residency [--requests 1500] [--concurrency 8] [--json bench/results/residency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from bench.common import git_commit, write_report
from fleet.demo.modelgen import mlp_onnx, random_mlp
from fleet.local.procs import ServiceProcess
from fleet.local.servers import free_port
from fleet.local.stack import LOCAL_BROKER_ENV, LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import (
    BatchingConfig,
    InferenceRequest,
    InferenceResponse,
    ModelRecord,
    ModelRegistry,
    Names,
    ReplyAddress,
    ReplyKind,
    Tensor,
)
from schemas.constants import HEADER_ENVELOPE_VERSION, HEADER_REQUEST_ID
from schemas.topics import ensure_model_topics
from workers.artifact_cache import ArtifactCache
from workers.footprint import measure, trim_heap
from workers.runtimes import load_runtime

MODELS = [f"m{i:02d}" for i in range(20)]
HOT = ["m00", "m01", "m10"]  # 80 % of the skewed traffic (2 on worker A, 1 on worker B)
LAYERS = [1024, 1024, 1024, 448]  # ~2.5 M FP32 weights: ~10 MB per artifact
FITS = 5


def _models(home: Path) -> list[ModelRecord]:
    batching = BatchingConfig(max_batch_size=16, max_queue_delay_ms=2.0)
    return [
        build_record(name, "1", mlp_onnx(home / f"{name}.onnx", random_mlp(LAYERS, seed=i)), batching=batching)
        for i, name in enumerate(MODELS)
    ]


def _footprint(records: Sequence[ModelRecord]) -> int:
    """Median footprint of a few of the models, loaded and measured as a worker does."""
    sizes, runtimes = [], []
    for record in records[:4]:
        trim_heap()
        runtime, size = measure(lambda r=record: load_runtime(r, "cpu"), lambda rt: rt.device, record.size_bytes)  # type: ignore[misc]
        sizes.append(max(size, record.size_bytes))
        runtimes.append(runtime)
    for runtime in runtimes:
        runtime.unload()
    trim_heap()
    return int(statistics.median(sizes))


def _isolated_reload_ms(records: Sequence[ModelRecord], home: Path, rounds: int = 30) -> list[float]:
    """The reload path of a worker (cache fetch, trim, measured load), timed alone in this process."""
    cache = ArtifactCache(home / "cache-isolated")
    for record in records[:3]:
        cache.fetch(record)
    times = []
    for i in range(rounds):
        record = records[i % 3]
        began = time.perf_counter()
        local = dataclasses.replace(record, artifact=str(cache.fetch(record).path))
        trim_heap()
        runtime, _ = measure(lambda r=local: load_runtime(r, "cpu", verified=True), lambda rt: rt.device, 0)  # type: ignore[misc]
        times.append((time.perf_counter() - began) * 1000)
        runtime.unload()
        trim_heap()
    return sorted(times)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _total(samples: dict[Any, float], name: str, **match: str) -> float:
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == name and all(dict(labels).get(k) == v for k, v in match.items())
    )


def _reload_buckets(samples: dict[Any, float]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of the reload histogram summed over models."""
    bounds: dict[float, float] = {}
    for (sample, labels), value in samples.items():
        if sample == "fleet_worker_model_reload_seconds_bucket":
            le = float(dict(labels)["le"])
            bounds[le] = bounds.get(le, 0.0) + value
    return sorted(bounds.items())


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Linear interpolation inside the bucket holding quantile ``q`` (as Prometheus' histogram_quantile)."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _diff(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


class Client:
    """Closed-loop requests over Kafka, replies from one Redis stream."""

    def __init__(self, producer: AIOKafkaProducer, redis: Any, names: Names) -> None:
        self._producer = producer
        self._redis = redis
        self._names = names
        self._stream = names.reply_stream(f"bench-{os.getpid()}")
        self._waiting: dict[str, asyncio.Future[InferenceResponse]] = {}
        self._x = np.random.default_rng(0).standard_normal((1, LAYERS[0])).astype(np.float32)
        self._count = 0

    async def read_routine(self) -> None:
        last = "$"
        while True:
            result = await self._redis.xread({self._stream: last}, count=1000, block=200)
            for _, entries in result or []:
                for entry_id, fields in entries:
                    last = entry_id
                    response = InferenceResponse.from_bytes(fields[b"r"])
                    future = self._waiting.pop(response.id, None)
                    if future is not None and not future.done():
                        future.set_result(response)

    async def ask(self, model: str) -> InferenceResponse:
        self._count += 1
        request = InferenceRequest(
            id=f"b{os.getpid()}-{self._count}",
            model=model,
            version="1",
            inputs=(Tensor.from_numpy("x", self._x),),
            reply=ReplyAddress(ReplyKind.STREAM, self._stream),
        )
        future: asyncio.Future[InferenceResponse] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = future
        key = request.id.encode()
        headers = [(HEADER_REQUEST_ID, key), (HEADER_ENVELOPE_VERSION, b"1")]
        await self._producer.send(self._names.request_topic(model), request.to_bytes(), key=key, headers=headers)
        return await asyncio.wait_for(future, 60)


async def _phase(client: Client, choose: Any, requests: int, concurrency: int) -> dict[str, Any]:
    answered: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    remaining = requests

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            model = choose()
            began = time.perf_counter()
            response = await client.ask(model)
            latencies.append((time.perf_counter() - began) * 1000)
            if response.error is None:
                answered[model] += 1
            else:
                errors[f"{model}: {response.error.code.value} {response.error.message}"[:200]] += 1

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": requests,
        "answered": sum(answered.values()),
        "models_answered": len(answered),
        "per_model": dict(sorted(answered.items())),
        "errors": dict(errors),
        "throughput_rps": round(requests / elapsed, 1),
        "latency_p50_ms": round(latencies[len(latencies) // 2], 1),
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1),
    }


def _metrics_delta(
    ports: Sequence[int], before: list[dict[Any, float]]
) -> tuple[dict[str, Any], list[dict[Any, float]]]:
    after = [_scrape(port) for port in ports]
    hits = sum(_total(a, "fleet_worker_residency_lookups_total", result="hit") for a in after) - sum(
        _total(b, "fleet_worker_residency_lookups_total", result="hit") for b in before
    )
    misses = sum(_total(a, "fleet_worker_residency_lookups_total", result="miss") for a in after) - sum(
        _total(b, "fleet_worker_residency_lookups_total", result="miss") for b in before
    )
    buckets: dict[float, float] = {}
    for a, b in zip(after, before, strict=True):
        for bound, count in _diff(_reload_buckets(a), _reload_buckets(b)):
            buckets[bound] = buckets.get(bound, 0.0) + count
    reload = sorted(buckets.items())

    def delta(name: str, **match: str) -> int:
        return int(sum(_total(a, name, **match) for a in after) - sum(_total(b, name, **match) for b in before))

    def ms(q: float) -> float | None:
        value = _quantile(reload, q)
        return None if value is None else round(value * 1000, 1)

    figures = {
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        "resident_hits": int(hits),
        "misses": int(misses),
        "reloads": int(reload[-1][1]) if reload else 0,
        "reload_p50_ms": ms(0.5),
        "reload_p90_ms": ms(0.9),
        "reload_p99_ms": ms(0.99),
        "evictions": delta("fleet_worker_model_evictions_total"),
        "disk_cache_hits": delta("fleet_worker_artifact_cache_requests_total", result="hit"),
        "disk_cache_misses": delta("fleet_worker_artifact_cache_requests_total", result="miss"),
        "resident_bytes": [int(_total(a, "fleet_worker_resident_bytes")) for a in after],
    }
    return figures, after


async def _wait_ready(redis: Any, names: Names, procs: Sequence[ServiceProcess], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        states = [await redis.hget(names.worker_key(p.name), "state") for p in procs]
        if all(s == b"ready" for s in states):
            return
        for proc in procs:
            if not proc.running:
                raise RuntimeError(f"worker {proc.name} exited:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers not ready after {timeout_s}s: {states}")
        await asyncio.sleep(0.2)


async def run(requests: int, concurrency: int, seed: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="fleet-bench-residency-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    records = _models(home)
    footprint = _footprint(records)
    budget_mb = FITS * 1.1 * footprint / (1 << 20)
    alone = _isolated_reload_ms(records, home)
    alone_p50, alone_p90 = round(alone[len(alone) // 2], 1), round(alone[int(len(alone) * 0.9)], 1)
    report: dict[str, Any] = {
        "benchmark": "residency",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}",
        "models": len(MODELS),
        "artifact_mb": round(records[0].size_bytes / (1 << 20), 2),
        "measured_footprint_mb": round(footprint / (1 << 20), 2),
        "budget_mb_per_worker": round(budget_mb, 1),
        "models_per_worker": 10,
        "fit_per_worker": FITS,
        "hot_models": HOT,
        "reload_alone_p50_ms": alone_p50,
        "reload_alone_p90_ms": alone_p90,
    }
    print(
        f"{len(MODELS)} models, artifact {report['artifact_mb']} MB, measured footprint "
        f"{report['measured_footprint_mb']} MB; 2 workers x 10 models, budget {budget_mb:.1f} MB each (fits {FITS})"
    )
    print(f"reload path alone (this process, no traffic): p50 {alone_p50} ms, p90 {alone_p90} ms")
    config = StackConfig(home=home, workers=0, gateway=False, models=(), env=env)
    async with LocalStack(config) as stack:
        names = Names(config.namespace)
        redis = stack.settings.redis.client()
        registry = ModelRegistry(redis, names)
        for record in records:
            await registry.register(record)
            await registry.record_measured_size(record.name, record.version, footprint)
            await ensure_model_topics(stack.settings.kafka, names, record.name)
        ports = [free_port(), free_port()]
        procs = []
        for i, (port, served) in enumerate(zip(ports, (MODELS[:10], MODELS[10:]), strict=True)):
            worker_env = {
                **env,
                **LOCAL_BROKER_ENV,
                "FLEET_NAMESPACE": config.namespace,
                "FLEET_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
                "FLEET_REDIS_URL": stack.redis_url,
                "FLEET_WORKER_ID": f"bench-w{i}",
                "FLEET_WORKER_MODELS": ",".join(served),
                "FLEET_WORKER_DEVICE": "cpu",
                "FLEET_WORKER_MEMORY_BUDGET_MB": f"{budget_mb:.2f}",
                "FLEET_WORKER_OVERCOMMIT_PCT": "100",
                "FLEET_WORKER_CACHE_DIR": str(home / f"cache-w{i}"),
                "FLEET_WORKER_METRICS_PORT": str(port),
                "PYTHONUNBUFFERED": "1",
            }
            proc = ServiceProcess(f"bench-w{i}", [sys.executable, "-m", "workers"], worker_env, home / f"w{i}.log")
            proc.start()
            procs.append(proc)
        producer = AIOKafkaProducer(**{**stack.settings.kafka.producer_kwargs(), "linger_ms": 1})
        await producer.start()
        try:
            await _wait_ready(redis, names, procs)
            client = Client(producer, redis, names)
            reader = asyncio.create_task(client.read_routine())
            rng = random.Random(seed)
            cold = [m for m in MODELS if m not in HOT]
            baseline = start = [_scrape(port) for port in ports]
            phases = {
                "uniform": lambda: rng.choice(MODELS),
                "skewed": lambda: rng.choice(HOT) if rng.random() < 0.8 else rng.choice(cold),
            }
            idle_cpu = [_cpu_s(p.pid) for p in procs]
            await asyncio.sleep(5)
            idle = [round((_cpu_s(p.pid) - c) / 5 * 100, 1) for p, c in zip(procs, idle_cpu, strict=True)]
            report["idle_worker_cpu_pct"] = idle
            print(f"idle workers (10 models = 20 consumer group memberships each): CPU {idle} %")
            for label, choose in phases.items():
                cpu, began = [_cpu_s(p.pid) for p in procs], time.perf_counter()
                point = await _phase(client, choose, requests, concurrency)
                spent = time.perf_counter() - began
                point["worker_cpu_pct"] = [
                    round((_cpu_s(p.pid) - c) / spent * 100, 1) for p, c in zip(procs, cpu, strict=True)
                ]
                figures, baseline = _metrics_delta(ports, baseline)
                point.update(figures)
                report[label] = point
                print(
                    f"{label:8s} {point['answered']}/{requests} answered, {point['models_answered']} models answered, "
                    f"{point['throughput_rps']} req/s, hit rate {point['hit_rate']:.1%}, {point['reloads']} reloads "
                    f"(p50 {point['reload_p50_ms']} ms, p90 {point['reload_p90_ms']} ms, "
                    f"p99 {point['reload_p99_ms']} ms), "
                    f"{point['evictions']} evictions, disk cache {point['disk_cache_hits']} hits / "
                    f"{point['disk_cache_misses']} misses, errors {sum(point['errors'].values())}"
                )
            report["both_phases"], _ = _metrics_delta(ports, start)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        finally:
            await producer.stop()
            await asyncio.gather(*(p.stop(30) for p in procs))
            await redis.aclose()
    uniform, skewed = report["uniform"], report["skewed"]
    report["every_model_answered"] = uniform["models_answered"] == len(MODELS)
    both = report["both_phases"]
    print(
        f"every model answered: {report['every_model_answered']}; reload from the disk cache ({both['reloads']} "
        f"reloads): p50 {both['reload_p50_ms']} ms, p90 {both['reload_p90_ms']} ms, p99 {both['reload_p99_ms']} ms "
        f"(target p50 <= 100 ms); skewed hit rate {skewed['hit_rate']:.1%} (target >= 90 %)"
    )
    print(f"uniform reload p50 {uniform['reload_p50_ms']} ms (target <= 100 ms)")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500, help="requests per phase")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default="bench/results/residency.json", help="where to write the figures")
    args = parser.parse_args()
    began = time.perf_counter()
    commit = git_commit()
    report = asyncio.run(run(args.requests, args.concurrency, args.seed))
    report.update(commit=commit, wall_s=round(time.perf_counter() - began, 1), requests_per_phase=args.requests)
    report["concurrency"] = args.concurrency
    write_report(args.json, report)


if __name__ == "__main__":
    main()
