"""GPU benchmark: a ResNet-50-shaped network served on CUDA, next to its in-process batched limit.

One command, meant to finish in under 6 minutes on a machine with one NVIDIA GPU. It builds a ResNet-50-shaped
convolutional network in torch (random weights; bottleneck blocks 3-4-6-3, no torchvision), saves it as
TorchScript and as a ``torch.export`` program (``.pt2``) when this build of the fleet serves those, and for each:

* measures the model's **in-process batched limit** on the device (images/s at the best of a few batch sizes,
  ``torch.inference_mode``, synchronised timing): the ceiling the fleet is compared with;
* starts the embedded stack (broker, Redis, 1 gateway, 1 worker on the device) and drives the **sync path** with
  binary OIP bodies at concurrency 1/16/64: images/s, p50/p99, the worker's mean batch, and the ratio to the limit;
* pushes ``--batch-records`` images through **``fleet batch run``** (.npy in, .npy out): images/s;
* reads **NVML utilization and memory** from the worker's ``/metrics`` during the load;
* measures **GPU memory before and after an LRU eviction**: a second model of the same shape is asked for with a
  memory budget that holds one, so the first is evicted; NVML's used memory is read before and after.

    python -m bench.gpu [--device cuda] [--duration 15] [--concurrency 1,16,64] [--batch-records 512]
                        [--image 224] [--width 1.0] [--json bench/results/gpu.json]

Without a GPU it runs on the CPU with ``--device cpu --image 64 --width 0.25`` (a smoke test of the script, not a
figure to report). On the lent GPU machine nothing can be downloaded: ``bench/gpu_wheels.sh`` gathers the wheels the
fleet needs there, and docs/benchmarks.md gives the one command that installs them and runs this script.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import git_commit, machine, write_report
from bench.loadgen import closed_loop
from fleet.local.stack import LocalStack, StackConfig
from fleet.models.artifacts import build_record
from schemas import BatchingConfig, ModelRegistry, Names
from schemas.topics import ensure_model_topics

#: Input and output names of the served network.
INPUT, OUTPUT = "images", "logits"
#: Batch sizes tried for the in-process limit (the best one is the ceiling).
LIMIT_BATCHES = (8, 32, 64, 128)
#: The worker's batch cap and queue delay for the served network.
MAX_BATCH, QUEUE_DELAY_MS = 64, 2.0


def resnet50_shaped(width: float = 1.0, classes: int = 1000, seed: int = 0) -> Any:
    """A ResNet-50-shaped network (bottleneck blocks 3-4-6-3) with random weights, in eval mode.

    ``width`` scales every channel count (1.0 is ResNet-50's); built in torch directly, since torchvision
    pulls another torch build.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def channels(c: int) -> int:
        return max(8, int(c * width))

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, mid: int, stride: int) -> None:
            super().__init__()
            cout = mid * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU(inplace=True),
                nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU(inplace=True),
                nn.Conv2d(mid, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.skip: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.relu(self.body(x) + self.skip(x))
            return out

    stem = channels(64)
    layers: list[nn.Module] = [
        nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(stem),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    cin = stem
    for blocks, mid, stride in ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, channels(mid), stride if i == 0 else 1))
            cin = channels(mid) * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers).eval()


def save_artifacts(model: Any, image: int, directory: Path, stem: str) -> dict[str, Path]:
    """The network as TorchScript (``.pt``) and, where torch can, as a ``torch.export`` program (``.pt2``)."""
    import torch

    example = torch.randn(2, 3, image, image)
    paths: dict[str, Path] = {}
    with torch.inference_mode():
        scripted = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
    paths["torchscript"] = directory / f"{stem}.pt"
    scripted.save(str(paths["torchscript"]))
    try:
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        paths["torch-export"] = directory / f"{stem}.pt2"
        torch.export.save(program, str(paths["torch-export"]))
    except Exception as exc:  # an export failure only drops that column
        print(f"torch.export not available for this network here ({type(exc).__name__}: {exc})", flush=True)
    return paths


def in_process_limit(model: Any, image: int, device: str, seconds: float) -> dict[str, float]:
    """Images/s of the network run in-process on ``device`` at each of ``LIMIT_BATCHES`` (synchronised timing)."""
    import torch

    net = model.to(device)
    found: dict[str, float] = {}
    for batch in LIMIT_BATCHES:
        x = torch.randn(batch, 3, image, image, device=device)
        with torch.inference_mode():
            for _ in range(3):
                net(x)
            _sync(device)
            began, runs = time.perf_counter(), 0
            while time.perf_counter() - began < seconds / len(LIMIT_BATCHES):
                net(x)
                runs += 1
            _sync(device)
        found[str(batch)] = runs * batch / (time.perf_counter() - began)
        print(f"  in-process, batch {batch:>3}: {found[str(batch)]:,.0f} images/s", flush=True)
    model.to("cpu")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return found


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _scrape(port: int) -> dict[str, float]:
    """The worker's GPU gauges (``fleet_worker_gpu_*``), summed over GPUs."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fleet_worker_gpu_"):
            name, _, value = line.rpartition(" ")
            key = name.split("{", 1)[0]
            found[key] = found.get(key, 0.0) + float(value)
    return found


async def _register(stack: LocalStack, name: str, path: Path, framework: str, image: int) -> None:
    from schemas import Framework, TensorSpec

    redis = stack.settings.redis.client()
    try:
        names = Names(stack.config.namespace)
        record = build_record(
            name,
            "1",
            path,
            framework=Framework(framework),
            inputs=(TensorSpec(INPUT, "FP32", (-1, 3, image, image)),),
            outputs=(TensorSpec(OUTPUT, "FP32", (-1, 1000)),),
            batching=BatchingConfig(MAX_BATCH, QUEUE_DELAY_MS),
        )
        await ModelRegistry(redis, names).register(record)
        await ensure_model_topics(stack.settings.kafka, names, name)
    finally:
        await redis.aclose()


def _batch_run(stack: LocalStack, model: str, records: int, image: int, directory: Path) -> dict[str, float]:
    """``fleet batch run`` over ``records`` images in an .npy file; images/s end to end."""
    source, target = directory / f"{model}-in.npy", directory / f"{model}-out.npy"
    np.save(source, np.random.default_rng(1).standard_normal((records, 3, image, image), dtype=np.float32))
    env = {**os.environ, "FLEET_KAFKA_BOOTSTRAP": stack.settings.kafka.bootstrap}
    env.update({"FLEET_REDIS_URL": stack.settings.redis.url, "FLEET_NAMESPACE": stack.config.namespace})
    command = [sys.executable, "-m", "fleet.cli", "batch", "run", "--model", model, "--input", str(source)]
    command += ["--output", str(target), "--quiet", "--window", "256"]
    began = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    seconds = time.perf_counter() - began
    answered = np.load(target, mmap_mode="r").shape[0]
    return {
        "records": records,
        "answered": int(answered),
        "seconds": round(seconds, 2),
        "images_per_s": answered / seconds,
    }


async def _serve(
    args: argparse.Namespace, framework: str, path: Path, second: Path, limit: float, home: Path
) -> dict[str, Any]:
    """One stack serving ``path``: sync load per concurrency, NVML gauges, batch run, an LRU eviction."""
    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({"FLEET_WORKER_DEVICE": args.device, "FLEET_WORKER_METRICS_PORT": str(args.metrics_port)})
    out: dict[str, Any] = {"framework": framework, "runs": []}
    async with LocalStack(StackConfig(home=home, workers=1, models=(), env=env)) as stack:
        await _register(stack, "net", path, framework, args.image)
        await _register(stack, "net2", second, framework, args.image)
        await stack.restart_workers(["net", "net2"])
        for concurrency in args.concurrency:
            result = await closed_loop(
                stack.url,
                "net",
                INPUT,
                0,
                concurrency,
                args.duration,
                warmup_s=3.0,
                sample_shape=(1, 3, args.image, args.image),
            )
            gpu = await asyncio.to_thread(_scrape, args.metrics_port) if args.device != "cpu" else {}
            images = result.req_per_s
            row = result.as_dict() | {"images_per_s": images, "of_limit": images / limit, "gpu": gpu}
            out["runs"].append(row)
            print(f"  {result.line()}  {100 * images / limit:.0f} % of the in-process limit", flush=True)
            if gpu:
                print(
                    f"{'':>13}NVML: " + ", ".join(f"{k[len('fleet_worker_gpu_') :]} {v:,.0f}" for k, v in gpu.items())
                )
        if args.batch_records:
            out["batch_run"] = await asyncio.to_thread(_batch_run, stack, "net", args.batch_records, args.image, home)
            print(f"  fleet batch run: {out['batch_run']['images_per_s']:,.0f} images/s", flush=True)
        out["eviction"] = await _eviction(stack, env, args)
    return out


async def _eviction(stack: LocalStack, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """GPU memory before and after an LRU eviction: the worker restarts with a budget that holds one network
    (from the footprint it measured), serves ``net``, then is asked for ``net2``, which evicts ``net``."""
    redis = stack.settings.redis.client()
    try:
        sizes = await ModelRegistry(redis, Names(stack.config.namespace)).measured_sizes("net", "1")
    finally:
        await redis.aclose()
    measured = max(sizes.values(), default=0)
    if not measured:
        return {"skipped": "the worker recorded no footprint for net"}
    env["FLEET_WORKER_MEMORY_BUDGET_MB"] = str(int(1.5 * measured / (1 << 20)) + 1)
    env["FLEET_WORKER_OVERCOMMIT_PCT"] = "100"  # both stay assigned; only one fits resident
    await stack.restart_workers(["net", "net2"])
    shape = (1, 3, args.image, args.image)
    used: dict[str, float | None] = {}
    key = "fleet_worker_gpu_memory_used_bytes"
    for model in ("net", "net2"):
        result = await closed_loop(stack.url, model, INPUT, 0, 1, 1.0, warmup_s=0.5, sample_shape=shape)
        if result.errors:
            return {"error": result.error_samples[:1]}
        await asyncio.sleep(1.0)
        used[model] = (await asyncio.to_thread(_scrape, args.metrics_port)).get(key) if args.device != "cpu" else None
    print(f"  GPU memory used with net resident / after net2 evicted it: {used['net']} / {used['net2']}", flush=True)
    budget = env["FLEET_WORKER_MEMORY_BUDGET_MB"]
    return {"budget_mb": budget, "used_bytes_net": used["net"], "used_bytes_net2": used["net2"]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of the module docstring, as one JSON-able report."""
    import torch

    report: dict[str, Any] = {"benchmark": "gpu", "commit": git_commit(), "machine": machine(), "device": args.device}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)
    home = Path(tempfile.mkdtemp(prefix="fleet-gpu-"))
    model = resnet50_shaped(args.width)
    paths = save_artifacts(model, args.image, home, "net")
    size_mb = paths["torchscript"].stat().st_size / (1 << 20)
    print(f"network: ResNet-50-shaped, width {args.width}, {size_mb:.0f} MB; image {args.image}px", flush=True)
    limits = in_process_limit(model, args.image, args.device, args.limit_s)
    limit = max(limits.values())
    report["in_process_images_per_s"] = limits
    evicting = save_artifacts(resnet50_shaped(args.width, seed=1), args.image, home, "net2")
    report["served"] = []
    for framework, path in paths.items():
        print(f"{framework}:", flush=True)
        try:
            served = await _serve(args, framework, path, evicting[framework], limit, home / framework)
        except Exception as exc:  # reported, not fatal
            print(f"  not served: {type(exc).__name__}: {exc}", flush=True)
            served = {"framework": framework, "error": f"{type(exc).__name__}: {exc}"}
        report["served"].append(served)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a smoke test)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per concurrency level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    parser.add_argument("--batch-records", type=int, default=512, help="images through fleet batch run (0: skip)")
    parser.add_argument("--image", type=int, default=224, help="image side in pixels")
    parser.add_argument("--width", type=float, default=1.0, help="channel width factor (1.0: ResNet-50)")
    parser.add_argument("--limit-s", type=float, default=8.0, help="seconds spent measuring the in-process limit")
    parser.add_argument("--metrics-port", type=int, default=9464, help="the worker's /metrics port")
    parser.add_argument("--json", default="bench/results/gpu.json", help="where to write the figures")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    began = time.perf_counter()
    report = asyncio.run(run(args))
    report["wall_s"] = round(time.perf_counter() - began, 1)
    write_report(args.json, report)


if __name__ == "__main__":
    main()
