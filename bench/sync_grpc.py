"""Sync gRPC benchmark: the sync HTTP benchmark's models and concurrency levels over the gateway's OIP v2 gRPC
service (ModelInfer, raw tensors), next to HTTP with binary tensors measured on the same stack in the same run.

Each (model, concurrency) point gets a fresh embedded stack (as in ``bench.sync_http``); on it both protocols
run one after the other, their order alternating from one point to the next (the embedded broker slows as
its log grows). Prints req/s and p50/p99 latency per protocol and the gRPC/HTTP throughput ratio; writes JSON.

    .venv/bin/python -m bench.sync_grpc [--duration 10] [--concurrency 1,16,64] [--models tiny,heavy]
                                        [--json bench/results/sync_grpc.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.common import git_commit, machine, write_report
from bench.loadgen import LoadResult, closed_loop
from bench.sync_http import MODELS, _free_port, _register
from fleet.local.stack import LocalStack, StackConfig
from schemas.oip_grpc import method_path, pb


async def grpc_closed_loop(
    target: str, model: str, input_name: str, features: int, concurrency: int, duration_s: float, warmup_s: float = 1.0
) -> LoadResult:
    """``concurrency`` clients on one channel, each sending one ModelInfer after another for ``duration_s``."""
    rng = np.random.default_rng(0)
    requests = []
    for _ in range(64):
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=input_name, datatype="FP32", shape=[1, features])
        request.raw_input_contents.append(rng.standard_normal((1, features)).astype("<f4").tobytes())
        requests.append(request)
    latencies: list[float] = []
    errors: list[str] = []
    stop_at, measuring = 0.0, False
    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(
            method_path("ModelInfer"),
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

        async def client(index: int) -> None:
            i = index
            while time.perf_counter() < stop_at:
                request = requests[i % len(requests)]
                i += 1
                start = time.perf_counter()
                try:
                    await infer(request, timeout=60)
                    ok, problem = True, ""
                except grpc.aio.AioRpcError as exc:
                    ok, problem = False, f"{exc.code().name}: {exc.details()}"
                elapsed = time.perf_counter() - start
                if measuring:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        errors.append(problem[:200])

        stop_at = time.perf_counter() + warmup_s
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        measuring = True
        began = time.perf_counter()
        stop_at = began + duration_s
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        seconds = time.perf_counter() - began
    ms = np.array(latencies) * 1000.0 if latencies else np.array([float("nan")])
    return LoadResult(
        model=model,
        concurrency=concurrency,
        requests=len(latencies),
        errors=len(errors),
        seconds=round(seconds, 3),
        req_per_s=len(latencies) / seconds,
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        mean_batch_size=None,
        error_samples=errors[:3],
    )


def _row(model: str, concurrency: int, http: LoadResult, over_grpc: LoadResult) -> str:
    ratio = over_grpc.req_per_s / http.req_per_s if http.req_per_s else float("nan")
    return (
        f"{model:>8} c={concurrency:<3} HTTP binary {http.req_per_s:7.0f} req/s p50 {http.p50_ms:6.2f} p99 "
        f"{http.p99_ms:6.2f} ms | gRPC {over_grpc.req_per_s:7.0f} req/s p50 {over_grpc.p50_ms:6.2f} p99 "
        f"{over_grpc.p99_ms:6.2f} ms | gRPC/HTTP {ratio:4.2f}  errors {http.errors}/{over_grpc.errors}"
    )


async def run(duration_s: float, concurrencies: list[int], models: list[str]) -> dict[str, Any]:
    """Every (model, concurrency) point over both protocols; the report ``bench.common.write_report`` writes."""
    report: dict[str, Any] = {
        "benchmark": "sync_grpc",
        "commit": git_commit(),
        "machine": machine(),
        "duration_s": duration_s,
        "runs": [],
    }
    point = 0
    for model in models:
        features = MODELS[model][1]
        for concurrency in concurrencies:
            grpc_port = _free_port()
            env = dict(os.environ, FLEET_GATEWAY_GRPC_PORT=str(grpc_port))
            env.setdefault("FLEET_WORKER_INTRA_OP_THREADS", "1")
            home = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
            async with LocalStack(StackConfig(home=home, workers=1, models=(), env=env)) as stack:
                await _register(stack, home)
                await stack.restart_workers([model])
                results: dict[str, LoadResult] = {}
                order = ("http", "grpc") if point % 2 == 0 else ("grpc", "http")
                for protocol in order:
                    if protocol == "http":
                        results[protocol] = await closed_loop(stack.url, model, "x", features, concurrency, duration_s)
                    else:
                        target = f"127.0.0.1:{grpc_port}"
                        results[protocol] = await grpc_closed_loop(
                            target, model, "x", features, concurrency, duration_s
                        )
            point += 1
            print(_row(model, concurrency, results["http"], results["grpc"]), flush=True)
            report["runs"].append(
                {"model": model, "concurrency": concurrency, "first": order[0]}
                | {protocol: result.as_dict() for protocol, result in results.items()}
            )
    return report


def main() -> None:
    """Entry point of ``python -m bench.sync_grpc``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per protocol and level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    parser.add_argument("--models", default="tiny,heavy", help=f"comma-separated subset of {sorted(MODELS)}")
    parser.add_argument("--json", default="bench/results/sync_grpc.json", help="where to write the figures")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    models = [m for m in args.models.split(",") if m]
    report = asyncio.run(run(args.duration, concurrencies, models))
    write_report(args.json, report)


if __name__ == "__main__":
    main()
